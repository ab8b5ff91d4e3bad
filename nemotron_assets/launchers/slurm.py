"""Slurm launcher: each launch is one `sbatch` job built from the profile, with Dagster Pipes over the shared
filesystem (context and message files in the job directory, on the profile's storage).

With an image for the step's backend in the profile's [images], the job runs in that container through pyxis
(`srun --container-image --container-mounts --container-workdir`: the storage and the profile's mounts at the
paths jobs see them); without one, it runs the command with the shared environment the Dagster host runs
(its interpreter's directory first on PATH), as on a cluster whose nodes share the checkout.

The job's output log is streamed into the run while it waits. Environment variables travel by name only
(`--export=NAME,...`: sbatch copies the values from its own environment, nothing is written into the script).
A job lost to the infrastructure (NODE_FAIL, PREEMPTED, BOOT_FAIL, cancelled outside the run) raises an
`InfrastructureFailure` (the asset retries it); a job whose command failed raises a `LaunchFailed` (not retried).
A completed job's GPU-hours come from accounting (sacct: its elapsed time, without the queue wait, x its GPUs).
"""

from __future__ import annotations

import collections
import os
import re
import shlex
import subprocess
import time
import uuid
from pathlib import Path

import dagster as dg

from nemotron_assets.launchers import IMAGE_FIELD, job_paths, step_kind, storage_pipes
from nemotron_assets.steps.launch import (
    LOCAL,
    InfrastructureFailure,
    Launcher,
    LaunchFailed,
    Measured,
    PathMap,
    local_env,
    measured,
)
from resources.profile import Profile

POLL_SECONDS = 1.0
ACCOUNTING_WAIT_SECONDS = 30  # slurmctld hands a finished job to slurmdbd asynchronously
INFRASTRUCTURE_STATES = frozenset({"NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "CANCELLED"})
STEP_FAILURE_STATES = frozenset({"FAILED", "TIMEOUT", "OUT_OF_MEMORY", "DEADLINE"})
TERMINAL_STATES = INFRASTRUCTURE_STATES | STEP_FAILURE_STATES | {"COMPLETED"}
# Process basics and the offline switches the Makefile sets; the profile's env_vars and the step's come on top.
PASSTHROUGH = (
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "TMPDIR",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_DATASETS_OFFLINE",
)
HOST_ONLY = ("PATH", "HOME", "USER")  # a container keeps its image's own
_TEXT = {"capture_output": True, "text": True}


class SlurmInfrastructureFailure(InfrastructureFailure):
    """The job was lost to the cluster, not to its command: retrying it is safe (training resumes)."""


class SlurmJobFailed(LaunchFailed):
    """The job's command failed (or sbatch refused it): a retry would fail the same way."""


def sbatch_command(
    profile: Profile, gpus: int, job_name: str, script: Path, log: Path, exports: list[str]
) -> list[str]:
    """The `sbatch --parsable` command line for one job of this profile, with `gpus` GPUs per node."""
    slurm = profile.slurm
    options = {
        "job-name": job_name,
        "partition": slurm.partition,
        "account": slurm.account,
        "time": slurm.time,
        "nodes": profile.nodes,
        "ntasks-per-node": 1,
        "gpus-per-node": gpus or None,
        "cpus-per-task": slurm.cpus_per_task,
        "mem": slurm.mem,
        "output": log,
        "export": ",".join(exports),
    }
    flags = [f"--{name}={value}" for name, value in options.items() if value is not None]
    return ["sbatch", "--parsable", *flags, *(["--exclusive"] if slurm.exclusive else []), str(script)]


def job_script(command: list[str], nodes: int, image: str | None = None, paths: PathMap = LOCAL) -> str:
    """The batch script: the command once per node through srun (in the image through pyxis when there is one),
    or the command itself on a single node without an image."""
    if image is None:
        launch = "srun --kill-on-bad-exit=1" if nodes > 1 else "exec"
        return f"#!/bin/bash\nset -euo pipefail\n{launch} {shlex.join(command)}\n"
    mounts = ",".join(f"{host}:{job}" for host, job in paths.pairs)
    pyxis = [f"--container-image={image}", f"--container-mounts={mounts}", f"--container-workdir={paths.pairs[0][1]}"]
    srun = shlex.join(["srun", "--kill-on-bad-exit=1", "--no-container-mount-home", *pyxis, *command])
    return f"#!/bin/bash\nset -euo pipefail\nexec {srun}\n"


def export_names(profile: Profile, env: dict[str, str], image: str | None = None) -> list[str]:
    """Names (never values) of the variables the job gets, among the basics, the profile's and the step's."""
    basics = [name for name in PASSTHROUGH if image is None or name not in HOST_ONLY]
    names = dict.fromkeys([*basics, *profile.env_vars, *env])
    return [name for name in names if name in os.environ or name in env]


def step_image(context: dg.AssetExecutionContext, profile: Profile) -> str | None:
    """The container image of the step's backend, None when the profile names none (the shared environment)."""
    if not profile.images.model_dump(exclude_none=True):
        return None
    return getattr(profile.images, IMAGE_FIELD[step_kind(context)])


def job_state(job_id: str) -> dict[str, str]:
    """JobState, ExitCode and Reason from slurmctld; from accounting once slurmctld has forgotten the job."""
    shown = subprocess.run(["scontrol", "show", "job", "-o", job_id], **_TEXT)
    if shown.returncode == 0:
        return dict(re.findall(r"(\w+)=(\S*)", shown.stdout))
    acct = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "State,ExitCode,Reason"], **_TEXT)
    if acct.returncode or not acct.stdout.strip():
        return {"JobState": "NODE_FAIL", "Reason": f"job {job_id} unknown to slurmctld and accounting"}
    state, exit_code, reason = acct.stdout.splitlines()[0].split("|")
    return {"JobState": state.split()[0], "ExitCode": exit_code, "Reason": reason}


def gpu_hours_of(elapsed_seconds: int, alloc_tres: str, requested_gpus: int) -> float:
    """GPU-hours of an accounted job: its elapsed time x the GPUs in its AllocTRES (`gres/gpu=N`), or the GPUs it
    requested where the allocation names none (a cluster whose AccountingStorageTRES leaves out gres/gpu)."""
    allocated = re.search(r"(?:^|,)gres/gpu=(\d+)(?:,|$)", alloc_tres)
    return elapsed_seconds * (int(allocated[1]) if allocated else requested_gpus) / 3600


def accounted_gpu_hours(job_id: str, requested_gpus: int, wait: float = ACCOUNTING_WAIT_SECONDS) -> float | None:
    """The ended job's GPU-hours from `sacct` (ElapsedRaw, AllocTRES); None where the cluster keeps no accounting,
    or its record of the job has not ended within `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        acct = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "State,ElapsedRaw,AllocTRES"], **_TEXT)
        if acct.returncode:
            return None
        row = acct.stdout.splitlines()[0].split("|") if acct.stdout.strip() else None
        if row and row[0].split()[0] in TERMINAL_STATES:
            return gpu_hours_of(int(row[1]), row[2], requested_gpus)
        if time.monotonic() > deadline:
            return None
        time.sleep(POLL_SECONDS)


def slurm_launcher(context: dg.AssetExecutionContext, profile: Profile, gpus: int) -> Launcher:
    """Submit each launch as an sbatch job; stream its log and Pipes messages; raise by how it ended."""

    def launch(command: list[str], env: dict[str, str]) -> Measured:
        if profile.slurm.host is not None:
            raise SlurmJobFailed(
                f"profile {profile.name}: submission over SSH ({profile.slurm.host}) is not supported; "
                "run Dagster on a login node (slurm.host unset)"
            )
        job_name = "nemotron-" + context.asset_key.to_user_string().replace("/", "-")
        paths = job_paths(profile)
        job_dir = Path(profile.slurm.job_dir or Path(profile.storage.host_path) / ".nemotron-jobs")
        directory = job_dir / f"{job_name}-{uuid.uuid4().hex[:8]}"
        directory.mkdir(parents=True)
        image = step_image(context, profile)
        with storage_pipes(context, directory, paths) as (pipes_env, session):
            job_env = env | pipes_env | ({} if image else {"PATH": local_env({})["PATH"]})
            script = job_script(command, profile.nodes, image, paths)
            job_id = _run_job(context, profile, gpus, job_name, directory, script, job_env, image)
        return measured(session.get_custom_messages(), accounted_gpu_hours(job_id, gpus * profile.nodes), "sacct")

    return launch


def _run_job(
    context: dg.AssetExecutionContext,
    profile: Profile,
    gpus: int,
    job_name: str,
    directory: Path,
    script_text: str,
    env: dict[str, str],
    image: str | None,
) -> str:
    """Submit the job and wait for it; its id once it completed, else the named failure."""
    script, log = directory / "job.sh", directory / "job.log"
    script.write_text(script_text)
    submit = sbatch_command(profile, gpus, job_name, script, log, export_names(profile, env, image))
    submitted = subprocess.run(submit, env=os.environ | env, **_TEXT)
    if submitted.returncode:
        raise SlurmJobFailed(f"sbatch refused the job {script}: {submitted.stderr.strip()}")
    job_id = submitted.stdout.strip().split(";")[0]
    context.log.info(f"Slurm job {job_id} submitted ({profile.name}); log {log}")
    tail: collections.deque[str] = collections.deque(maxlen=40)
    try:
        state = _wait(job_id, log, context, tail)
    except BaseException:  # the run was interrupted: don't leave the job holding the nodes
        subprocess.run(["scancel", job_id], **_TEXT)
        raise
    ended, exit_code, reason = state["JobState"], state.get("ExitCode", "?"), state.get("Reason", "?")
    if ended == "COMPLETED":
        return job_id
    detail = f"Slurm job {job_id} ended {ended} (exit {exit_code}, reason {reason}, log {log}); last lines:\n"
    detail += "\n".join(tail)
    if ended in INFRASTRUCTURE_STATES:
        # a job the controller lost track of may still run: cancel it before the retry submits another into the
        # same work directory (scancel of an ended job is a no-op)
        subprocess.run(["scancel", job_id], **_TEXT)
        raise SlurmInfrastructureFailure(detail)
    raise SlurmJobFailed(detail)


def log_line(text: str) -> str:
    """A line of the job's log as the run shows it: a progress bar redrawn with carriage returns, at its last state."""
    return text.rstrip().split("\r")[-1]


def _wait(job_id: str, log: Path, context: dg.AssetExecutionContext, tail: collections.deque[str]) -> dict[str, str]:
    """Poll the job until it ends, forwarding new log lines to the run; return its final state."""
    offset = 0
    while True:
        state = job_state(job_id)
        if log.exists():
            with log.open("rb") as f:
                f.seek(offset)
                for raw in f:  # binary: lines end at b"\n" only
                    if not raw.endswith(b"\n") and state["JobState"] not in TERMINAL_STATES:
                        break  # a partial line: read it whole next time
                    offset += len(raw)
                    line = log_line(raw.decode(errors="replace"))
                    context.log.info(line)
                    tail.append(line)
        if state["JobState"] in TERMINAL_STATES:
            return state
        time.sleep(POLL_SECONDS)
