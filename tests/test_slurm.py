"""The Slurm launcher: sbatch commands from the shipped profiles, and real jobs on a local single-node Slurm
(tests/slurm_cluster.py, with accounting): a training step end to end over Pipes, a killed job retried and resumed,
how a job's end is classified, and its GPU-hours from sacct."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
from conftest import DATA
from helpers import materialize_in_dagster, one_stage_pipeline
from slurm_cluster import PARTITION, slurm_cluster  # noqa: F401 (the fixture)

from nemotron_assets.job import command
from nemotron_assets.launchers import job_paths, launcher_for, slurm
from nemotron_assets.launchers.slurm import (
    accounted_gpu_hours,
    export_names,
    gpu_hours_of,
    job_script,
    log_line,
    sbatch_command,
)
from nemotron_assets.local_slurm import missing_programs
from nemotron_assets.steps.launch import InfrastructureFailure, LaunchFailed, Measured
from resources.profile import HardwareProfile, load_profile

SECRET = "hf_planted_secret_value_123"
TEST_PROFILE = f"""\
description = "The local single-node Slurm of the tests"
executor = "slurm"
nodes = 1
gpus_per_node = 0
cpus = 2
memory_gb = 4
env_vars = ["HF_TOKEN"]
mounts = ["{{fixtures}}:{{fixtures}}", "{{data}}:{{data}}"]  # the tiny Llama and the chat data, shared with the node

[storage]
host_path = "{{storage}}"

[slurm]
partition = "{PARTITION}"
time = "00:10:00"
job_dir = "{{job_dir}}"
"""


def test_sbatch_command_from_the_shipped_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    one, four = load_profile("slurm_1node"), load_profile("slurm_4node")
    env = {"NEMOTRON_STEP_SETTING": "/x/failure.json"}
    command = sbatch_command(one, 8, "job", tmp_path / "job.sh", tmp_path / "job.log", export_names(one, env))
    assert command[:2] == ["sbatch", "--parsable"] and command[-1] == str(tmp_path / "job.sh")
    expected = ["--partition=batch", "--account=my_account", "--time=04:00:00", "--nodes=1", "--gpus-per-node=8"]
    assert set(expected + ["--mem=0", "--exclusive", "--job-name=job", f"--output={tmp_path}/job.log"]) <= set(command)
    exported = next(flag for flag in command if flag.startswith("--export=")).removeprefix("--export=").split(",")
    assert {"PATH", "HF_TOKEN", "NEMOTRON_STEP_SETTING"} <= set(exported)
    assert "WANDB_API_KEY" not in exported  # a name the profile lists but this environment does not set
    assert SECRET not in " ".join(command) and "/x/failure.json" not in " ".join(command)
    command = sbatch_command(four, 8, "job", tmp_path / "job.sh", tmp_path / "job.log", [])
    assert {"--nodes=4", "--gpus-per-node=8", "--time=2-00:00:00", "--ntasks-per-node=1"} <= set(command)
    assert job_script(["python", "-m", "x y"], 4).endswith("srun --kill-on-bad-exit=1 python -m 'x y'\n")
    assert job_script(["python"], 1).endswith("\nexec python\n")


def test_pyxis_job_from_the_same_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """With [images], the job runs in the backend's container through pyxis: the storage mounted where the spec's
    paths point, the image's own PATH (not the login node's)."""
    monkeypatch.setenv("HF_TOKEN", SECRET)
    one = load_profile("slurm_1node")
    paths = job_paths(one)
    spec_path = paths.to_job(Path(one.storage.host_path) / "t" / "out" / ".work" / "v" / "job-automodel.json")
    script = job_script(command(spec_path), 1, one.images.automodel, paths)
    srun = shlex.split(script.splitlines()[-1])
    assert srun[:3] == ["exec", "srun", "--kill-on-bad-exit=1"]
    assert f"--container-image={one.images.automodel}" in srun
    assert "--container-mounts=/lustre/nemotron:/lustre/nemotron" in srun
    assert srun[-4:] == command(spec_path) == ["python", "-m", "nemotron_assets.job", spec_path]
    exported = export_names(one, {}, one.images.automodel)
    assert "PATH" not in exported and "HF_TOKEN" in exported


@pytest.fixture
def slurm_profile(
    slurm_cluster: Path,  # noqa: F811
    fixtures_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    """A profile `slurm_test` (0 GPUs, the local partition) in $NEMOTRON_PROFILE_DIR; returns its job directory."""
    profiles, jobs = tmp_path / "profiles", tmp_path / "jobs"
    profiles.mkdir()
    profile = TEST_PROFILE.format(job_dir=jobs, storage=tmp_path, fixtures=fixtures_dir, data=DATA)
    (profiles / "slurm_test.toml").write_text(profile)
    monkeypatch.setenv("NEMOTRON_PROFILE_DIR", str(profiles))
    monkeypatch.setenv("HF_TOKEN", SECRET)
    assert HardwareProfile(name="slurm_test").load().gpus_per_node == 0
    return jobs


def materialize_lora(tmp_path: Path, fixtures_dir: Path) -> tuple[dg.DagsterInstance, dg.ExecuteInJobResult]:
    pipeline = one_stage_pipeline("peft/automodel", DATA / "tiny_chat.jsonl")
    instance = dg.DagsterInstance.ephemeral()
    result = materialize_in_dagster(pipeline, tmp_path / "store", "slurm_test", instance)
    return instance, result


def messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [entry.user_message for entry in instance.all_logs(run_id)]


def test_training_step_through_slurm_and_pipes(slurm_profile: Path, fixtures_dir: Path, tmp_path: Path):
    instance, result = materialize_lora(tmp_path, fixtures_dir)
    assert result.success
    metadata = result.asset_materializations_for_node("t__out")[0].metadata
    assert metadata["launcher"].value == "slurm" and metadata["profile"].value == "slurm_test"
    assert metadata["steps"].value == 10
    assert metadata["usage/gpu_hours_from"].value == "sacct" and metadata["usage/gpu_hours"].value == 0  # 0 GPUs
    streamed = messages(instance, result.run_id)
    assert any(m.startswith("Slurm job ") and "submitted" in m for m in streamed)
    assert any(m.startswith("step 9: loss") for m in streamed)  # reported by the trainer over Pipes
    (job,) = slurm_profile.iterdir()
    assert SECRET not in (job / "job.sh").read_text()
    log_lines = [log_line(line) for line in (job / "job.log").read_bytes().decode().split("\n") if line.strip()]
    assert log_lines and set(log_lines) <= set(streamed)  # the job's output, streamed into the run


def scancel_when(condition, name: str, timeout: float = 300) -> threading.Thread:
    """Cancel the job named `name` (as an admin would) once `condition()` holds."""

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.1)
        subprocess.run(["scancel", f"--name={name}"], check=True)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_cancelled_training_job_is_retried_and_resumes(slurm_profile: Path, fixtures_dir: Path, tmp_path: Path):
    work = tmp_path / "store"
    watcher = scancel_when(lambda: any(work.glob("**/.work/*/checkpoints/LATEST")), "nemotron-t-out")
    instance, result = materialize_lora(tmp_path, fixtures_dir)
    watcher.join()
    assert result.success
    events = {e.event_type_value for e in result.all_events}
    assert "STEP_UP_FOR_RETRY" in events
    streamed = messages(instance, result.run_id)
    assert any("ended CANCELLED" in m for m in streamed)
    (loaded,) = [m for m in streamed if "Loading checkpoint from" in m]  # the job's log, streamed
    assert int(loaded.rsplit("_step_", 1)[1]) >= 4  # step 4's checkpoint, or a later one saved on SIGTERM
    trained = [m.split(":")[0] for m in streamed if m.startswith("step ")]
    assert trained.count("step 0") == 1 and trained.count("step 9") == 1  # resumed, not restarted
    assert result.asset_materializations_for_node("t__out")[0].metadata["steps"].value == 10


def launch_in_asset(command: list[str]) -> Exception | Measured | None:
    """Launch `command` through the slurm_test profile's launcher inside an asset; return what it raised, or what
    the launcher returned."""
    outcome: list[Exception | Measured | None] = []

    @dg.asset
    def probe(context):  # noqa: ANN001 (a string annotation here is refused by Dagster)
        try:
            outcome.append(launcher_for(context, HardwareProfile(name="slurm_test").load(), 0)(command, {}))
        except Exception as e:
            outcome.append(e)
        return dg.MaterializeResult()

    assert dg.materialize([probe]).success
    return outcome[0]


def test_failed_command_is_a_step_failure(slurm_profile: Path):
    error = launch_in_asset([sys.executable, "-c", "import sys; print('bad input, giving up'); sys.exit(3)"])
    assert isinstance(error, LaunchFailed) and not isinstance(error, InfrastructureFailure)
    assert "ended FAILED (exit 3:0" in str(error) and "bad input, giving up" in str(error)


def test_cancelled_job_is_an_infrastructure_failure(slurm_profile: Path):
    running = lambda: any("working" in log.read_text() for log in slurm_profile.glob("*/job.log"))  # noqa: E731
    watcher = scancel_when(running, "nemotron-probe")
    error = launch_in_asset([sys.executable, "-c", "import time; print('working', flush=True); time.sleep(120)"])
    watcher.join()
    assert isinstance(error, InfrastructureFailure) and "ended CANCELLED" in str(error)
    assert "working" in str(error)  # the job's tail


def test_a_job_the_controller_lost_is_cancelled_before_a_retry(slurm_profile: Path, monkeypatch: pytest.MonkeyPatch):
    """A job slurmctld and accounting no longer know is an infrastructure failure (the run retries it), and it is
    cancelled first: it may still be running, and the retry writes into the same work directory."""
    real = slurm.job_state
    running = lambda job_id: real(job_id).get("JobState") == "RUNNING"  # noqa: E731
    lost: list[str] = []

    def forgetful(job_id: str) -> dict[str, str]:
        if running(job_id) and any("working" in log.read_text() for log in slurm_profile.glob("*/job.log")):
            lost.append(job_id)
            return {"JobState": "NODE_FAIL", "Reason": f"job {job_id} unknown to slurmctld and accounting"}
        return real(job_id)

    monkeypatch.setattr(slurm, "job_state", forgetful)
    error = launch_in_asset([sys.executable, "-c", "import time; print('working', flush=True); time.sleep(120)"])
    assert isinstance(error, InfrastructureFailure) and "unknown to slurmctld" in str(error)
    deadline = time.monotonic() + 30
    while real(lost[0])["JobState"] not in slurm.TERMINAL_STATES and time.monotonic() < deadline:
        time.sleep(0.5)
    assert real(lost[0])["JobState"] == "CANCELLED"


def test_a_completed_job_is_measured_from_accounting(slurm_profile: Path, monkeypatch: pytest.MonkeyPatch):
    measured_ids: list[str] = []
    real = slurm.accounted_gpu_hours

    def recorded(job_id: str, requested_gpus: int) -> float | None:
        measured_ids.append(job_id)
        return real(job_id, requested_gpus)

    monkeypatch.setattr(slurm, "accounted_gpu_hours", recorded)
    measured = launch_in_asset([sys.executable, "-c", "import time; time.sleep(2); print('fine')"])
    assert measured == Measured(0.0, "sacct")  # accounted (this cluster's jobs hold no GPUs); no CUDA, no peak
    (job_id,) = measured_ids  # the job the launcher measured (not "the last one named so": accounting lags)
    row = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "State,ElapsedRaw,AllocTRES"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()[0]
    state, elapsed, tres = row.split("|")
    assert state == "COMPLETED" and int(elapsed) >= 2 and "gres/gpu" not in tres
    # where the allocation names no GPUs, the GPUs the job asked for count
    assert accounted_gpu_hours(job_id, requested_gpus=4) == int(elapsed) * 4 / 3600
    assert accounted_gpu_hours("999999999", 1, wait=0) is None  # no record: no figure


def test_gpu_hours_of_an_accounted_job():
    tres = "billing=64,cpu=64,gres/gpu=8,gres/gpu:h100=8,mem=1000G,node=1"
    assert gpu_hours_of(5400, tres, requested_gpus=1) == 12.0  # the allocation's GPUs, not the request
    assert gpu_hours_of(5400, "billing=1,cpu=1,node=1", requested_gpus=2) == 3.0


def test_slurm_up_and_down_from_the_command_line(tmp_path: Path):
    """`nemotron-assets slurm up` leaves a working cluster and a matching profile behind; `down` stops it."""
    if missing_programs():
        pytest.skip("Slurm not installed here; .ci/run installs it from Debian")
    cli = [sys.executable, "-m", "nemotron_assets.cli", "slurm"]
    up = subprocess.run([*cli, "up", "--dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    try:
        assert up.returncode == 0, up.stderr
        exports = dict(item.split("=", 1) for item in up.stdout.split()[1:])
        assert exports["NEMOTRON_PROFILE"] == "slurm_local" and exports["NEMOTRON_PROFILE_DIR"] == str(tmp_path)
        assert load_profile("slurm_local", tmp_path).slurm.partition == PARTITION
        info = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=os.environ | exports)
        assert info.stdout.strip() == "idle"
    finally:
        subprocess.run([*cli, "down", "--dir", str(tmp_path)], check=True, timeout=120)
    assert not (tmp_path / "daemons.pid").exists()
