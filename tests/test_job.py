"""The job contract: a launched job runs `python -m nemotron_assets.job <spec>` in its image, reads and writes only
the storage its profile mounts (paths in the spec are the job's), and its failures come back as named errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATA
from dagster_pipes import decode_param
from helpers import job_spec

from nemotron_assets.catalog import CATALOG
from nemotron_assets.errors import NamedError
from nemotron_assets.execution import run_stage
from nemotron_assets.job import JobSpec, source_digest
from nemotron_assets.launchers import job_paths
from nemotron_assets.pipelines import PipelineSpec
from nemotron_assets.steps import InputArtifact, StepRun
from nemotron_assets.steps.launch import LaunchFailed, PathMap, local_env
from resources.artifact_store import ArtifactStore
from resources.profile import Profile, load_profile

MAP = PathMap((("/lustre/nemotron", "/workspace"), ("/lustre/nemotron/models", "/models")))


def test_paths_map_into_the_job_by_the_longest_mount():
    assert MAP.to_job("/lustre/nemotron/t/out/.work/v") == "/workspace/t/out/.work/v"
    assert MAP.to_job(Path("/lustre/nemotron/models/llama")) == "/models/llama"
    assert MAP.to_job("/lustre/nemotron") == "/workspace"
    assert MAP.args({"a": [Path("/lustre/nemotron/x"), "/lustre/nemotron/x", 3]}) == {
        "a": ["/workspace/x", "/lustre/nemotron/x", 3]  # only Paths are host paths; strings are the job's own
    }
    assert MAP.name("meta-llama/Llama-3.1-8B") == "meta-llama/Llama-3.1-8B"  # a hub id is not a path


def test_an_input_outside_the_storage_is_named_before_submission():
    with pytest.raises(NamedError) as e:
        MAP.to_job("/home/me/model")
    assert e.value.name == "input_outside_storage" and "storage host_path" in e.value.recovery


def test_every_remote_profile_names_its_storage(tmp_path: Path):
    for name in ("slurm_1node", "slurm_4node", "k8s", "lepton", "dgxcloud"):
        paths = job_paths(load_profile(name))
        assert paths.pairs and paths.to_job(paths.pairs[0][0] + "/a") == paths.pairs[0][1] + "/a"
    profile = load_profile("slurm_1node")
    with pytest.raises(NamedError) as e:
        job_paths(profile, tmp_path / "artifacts")  # the artifact root is not on the cluster's storage
    assert e.value.name == "storage_unreachable" and "NEMOTRON_ARTIFACT_ROOT" in e.value.recovery
    bare = Profile(**profile.model_dump(exclude={"storage"}))
    with pytest.raises(NamedError, match="storage_unreachable"):
        job_paths(bare)
    assert job_paths(load_profile("local_cpu")).pairs == ()  # this machine's jobs see it as it is


def test_pipes_bootstrap_names_the_jobs_paths(tmp_path: Path):
    """Pipes over the storage: the job's bootstrap variables point at the job's view of the files."""
    import dagster as dg

    from nemotron_assets.launchers import storage_pipes

    paths = PathMap(((str(tmp_path), "/workspace"),))
    seen = {}

    @dg.asset
    def probe(context):  # noqa: ANN001
        with storage_pipes(context, tmp_path, paths) as (env, _):
            seen.update({name: decode_param(value) for name, value in env.items()})
        return dg.MaterializeResult()

    assert dg.materialize([probe]).success
    assert seen["DAGSTER_PIPES_CONTEXT"]["path"] == "/workspace/pipes_context.json"
    assert seen["DAGSTER_PIPES_MESSAGES"]["path"] == "/workspace/pipes_messages.jsonl"


def spec_file(tmp_path: Path, **fields) -> Path:
    spec = JobSpec(
        step="eval/model_eval",
        backend="lm_eval",
        args={"argv": ["--help"]},
        work_dir=str(tmp_path),
        failure_file=str(tmp_path / "failure.json"),
        source_digest=source_digest(),
    ).model_copy(update=fields)
    path = tmp_path / "job.json"
    path.write_text(spec.model_dump_json())
    return path


def test_a_stale_image_fails_fast_with_a_named_error(tmp_path: Path):
    path = spec_file(tmp_path, source_digest="0" * 16)
    job = subprocess.run([sys.executable, "-m", "nemotron_assets.job", str(path)], capture_output=True, text=True)
    assert job.returncode == 86 and "job_image_stale" in job.stderr
    assert json.loads((tmp_path / "failure.json").read_text())["error"] == "job_image_stale"


def eval_run(tmp_path: Path, launcher) -> StepRun:
    step = CATALOG.step("eval/model_eval")
    params = step.preset_values("tiny") | {"model": str(tmp_path / "absent-model")}
    inputs = {"training_jsonl": InputArtifact("chat", "training_jsonl", DATA / "tiny_chat.jsonl", "v")}
    return StepRun(step, params, inputs, tmp_path / "out", tmp_path / "work", launcher=launcher)


def test_an_image_without_the_package_is_named(tmp_path: Path):
    """The job's `python` has no nemotron_assets (here: the bare interpreter this venv was made from)."""
    bare = tmp_path / "image-bin"
    bare.mkdir()
    (bare / "python").symlink_to(os.path.realpath(sys._base_executable))

    def image_launcher(command: list[str], env: dict[str, str]) -> None:
        job = subprocess.run(command, env={"PATH": str(bare)}, cwd=tmp_path, capture_output=True, text=True)
        if job.returncode:
            raise LaunchFailed(job.stderr)

    from nemotron_assets.steps.evaluation import model_eval

    with pytest.raises(NamedError) as e:
        model_eval.run(eval_run(tmp_path, image_launcher))
    assert e.value.name == "job_image_missing_package" and "Containerfile" in e.value.recovery


needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed (.ci/run installs it)")


@needs_bwrap
def test_a_job_sees_only_the_storage_at_its_own_paths(fixtures_dir: Path, tmp_path: Path):
    """eval/model_eval's lm-eval job runs in its own mount namespace, no network but loopback, where the store,
    the model and the data are at other paths than on the host and the host's paths are hidden: the spec, the
    task files and the model arguments name only the job's paths, and the scores come back through the store."""
    store = tmp_path / "store"
    mounts = {store: "/mnt/store", fixtures_dir: "/mnt/fixtures", DATA: "/mnt/data"}
    paths = PathMap(tuple((str(host), job) for host, job in mounts.items()))
    launched: list[JobSpec] = []

    def isolated(command: list[str], env: dict[str, str]) -> None:
        launched.append(job_spec([*command[:3], command[3].replace("/mnt/store", str(store), 1)]))
        hidden = [flag for host in (tmp_path, fixtures_dir, DATA) for flag in ("--tmpfs", str(host))]
        binds = [flag for host, job in mounts.items() for flag in ("--bind", str(host), job)]
        sandbox = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
        sandbox += [*hidden, "--tmpfs", "/mnt", *binds, "--unshare-all", "--die-with-parent", "--chdir", "/mnt/store"]
        job_env = local_env(env) | {"HOME": "/tmp"}  # the job's own home, like an image's
        job = subprocess.run([*sandbox, *command], env=job_env, capture_output=True, text=True)
        if job.returncode:
            raise LaunchFailed(job.stdout[-2000:] + job.stderr[-2000:])

    sources = [
        {"name": "chat", "type": "training_jsonl", "path": str(DATA / "tiny_chat.jsonl")},
        {"name": "base", "type": "checkpoint_hf", "path": str(fixtures_dir / "tiny-llama")},
    ]
    consumes = {"checkpoint_hf": "base", "training_jsonl": "chat"}
    stage = {"name": "out", "step": "eval/model_eval", "preset": "tiny", "consumes": consumes}
    pipeline = PipelineSpec.parse({"name": "t", "description": "eval", "sources": sources, "stages": [stage]})
    spec = pipeline.stage("out")
    params = pipeline.params(spec)
    isolated_result = run_stage(
        pipeline, spec, params, ArtifactStore(root=str(store)), "local_cpu", launcher=isolated, paths=paths
    )
    (job,) = launched
    text = job.model_dump_json()
    assert str(tmp_path) not in text and str(fixtures_dir) not in text and str(DATA) not in text
    assert "pretrained=/mnt/fixtures/tiny-llama" in " ".join(job.args["argv"])
    local = run_stage(pipeline, spec, params, ArtifactStore(root=str(tmp_path / "local")), "local_cpu")
    assert isolated_result.stats == pytest.approx(local.stats)  # the same scores as in-process on this machine


def test_no_container_runtime_and_no_root_filesystem_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from nemotron_assets.launchers import container
    from resources.profile import load_profile

    monkeypatch.setattr(container.shutil, "which", lambda name: None)  # no podman, docker or bwrap on the PATH
    with pytest.raises(NamedError, match="container_runtime_missing: neither podman, docker nor bwrap"):
        container.runtime(load_profile("container"))
    with pytest.raises(NamedError, match="container_rootfs_missing: .*not built") as e:
        container.ensure_rootfs(tmp_path / "rootfs")
    assert "rootfs build" in e.value.recovery
