"""The container executor and one job spec on every executor.

The executor runs each job in a Debian root filesystem of its own (debootstrap, built once and cached under
.nemotron/rootfs), under bubblewrap: the store bound at /store, fixtures and data read-only at /fixtures and /data,
no network but loopback, nothing else of the host visible. The tiny pipeline's model stages materialize through it
with the same results as in-process; a conversion and a quantization run through it too.
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

import dagster as dg
import pytest
from conftest import DATA
from dagster_k8s.pipes import build_pod_body
from helpers import materialize_in_dagster
from kubernetes.client import ApiClient

from nemotron_assets.factory import pipeline_assets
from nemotron_assets.job import command
from nemotron_assets.launchers import cloud, job_paths, k8s
from nemotron_assets.launchers.container import build_rootfs, bwrap_command, oci_command
from nemotron_assets.launchers.slurm import export_names, job_script
from nemotron_assets.paths import STATE_DIR
from nemotron_assets.pipelines import PIPELINE_DIR, PipelineSpec, load_pipeline
from resources.artifact_store import ArtifactStore
from resources.profile import HardwareProfile, load_profile

SPEC = "t/out/.work/v/job-automodel.json"  # a spec under each profile's storage
TIMINGS = ("seconds", "tokens_per_second", "mfu_percent")  # from wall-clock time: the rest must match
IN_PROCESS = ("chat_split", "binidx")  # the data the model stages read, made in-process
MODEL_STAGES = (*IN_PROCESS, "eval_base", "lora", "eval_lora", "merged", "eval_merged", "cpt", "eval_cpt")


def spec_command(profile_name: str) -> tuple[list[str], object]:
    profile = load_profile(profile_name)
    paths = job_paths(profile)
    return command(paths.to_job(Path(paths.pairs[0][0]) / SPEC)), paths


def test_one_spec_every_executor(monkeypatch: pytest.MonkeyPatch):
    """Slurm (with and without pyxis), the Kubernetes pod, Lepton and DGX Cloud and the container runtimes run the
    same command on the same job paths, with the storage mounted there and variables by name."""
    for name in ("HF_TOKEN", "WANDB_API_KEY", "LEPTON_WORKSPACE_ID", "LEPTON_TOKEN", "DGXC_APP_ID", "DGXC_APP_SECRET"):
        monkeypatch.setenv(name, "planted-value-7d1f")
    slurm_command, slurm_paths = spec_command("slurm_1node")
    slurm = load_profile("slurm_1node")
    pyxis = shlex.split(job_script(slurm_command, 1, slurm.images.automodel, slurm_paths).splitlines()[-1])
    assert pyxis[-4:] == slurm_command and "--container-mounts=/lustre/nemotron:/lustre/nemotron" in pyxis
    assert job_script(slurm_command, 1).splitlines()[-1] == f"exec {shlex.join(slurm_command)}"
    assert "HF_TOKEN" in export_names(slurm, {}) and "planted-value-7d1f" not in " ".join(pyxis)

    pod_command, _ = spec_command("k8s")
    profile = load_profile("k8s")
    body = build_pod_body("p", profile.images.automodel, pod_command, {}, None, k8s.pod_spec(profile, 8))
    api = ApiClient()
    (container,) = api._ApiClient__deserialize(api.sanitize_for_serialization(body), "V1Pod").spec.containers
    assert container.command == pod_command and container.image == "nvcr.io/nvidia/nemo-automodel:26.04"
    assert "/data" in {m.mount_path for m in container.volume_mounts} and pod_command[-1].startswith("/data/")

    lepton_command, _ = spec_command("lepton")
    executor = cloud.lepton_executor(load_profile("lepton"), "img:1", 8, {})
    assert executor.mounts[0]["mount_path"] == "/mnt/lustre-shared" and lepton_command[-1].startswith(
        "/mnt/lustre-shared/"
    )
    dgx_command, _ = spec_command("dgxcloud")
    dgx = cloud.dgxcloud_executor(load_profile("dgxcloud"), "img:1", 8, {})
    assert dgx.pvcs[0]["path"] == "/workspace" and dgx_command[-1].startswith("/workspace/")

    container_command, container_paths = spec_command("container")
    assert container_command[-1] == f"/store/{SPEC}"
    podman = oci_command("podman", "img:1", container_paths, container_command, ["HF_TOKEN"], 0)
    assert (
        podman[-4:] == container_command
        and "--network=none" in podman
        and podman[podman.index("--env") + 1] == "HF_TOKEN"
    )
    rootfs = STATE_DIR / "rootfs" / "unbuilt-for-this-test"
    try:
        sandbox = bwrap_command(rootfs, container_paths, container_command)
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    assert sandbox[-4:] == container_command and "--unshare-all" in sandbox
    assert sandbox[sandbox.index("--bind") + 1 : sandbox.index("--bind") + 3] == [container_paths.pairs[0][0], "/store"]


needs_tools = pytest.mark.skipif(
    not (shutil.which("bwrap") and shutil.which("debootstrap")), reason=".ci/run installs bubblewrap and debootstrap"
)


@pytest.fixture(scope="module")
def rootfs() -> Path:
    """The job root filesystem, built once (minutes) and kept under .nemotron/rootfs between runs."""
    return build_rootfs(Path(os.environ.get("NEMOTRON_ROOTFS") or STATE_DIR / "rootfs" / "job"))


def materialize(root: Path, profile: str, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    """The tiny pipeline's model stages (and the split and bins they read), materialized by Dagster on `profile`."""
    tiny = load_pipeline(PIPELINE_DIR / "tiny.yaml")
    return dg.materialize(
        pipeline_assets(tiny),
        resources={"artifact_store": ArtifactStore(root=str(root)), "hardware": HardwareProfile(name=profile)},
        selection=dg.AssetSelection.assets(*(dg.AssetKey(["tiny", name]) for name in MODEL_STAGES)),
        instance=instance,
    )


@needs_tools
def test_tiny_model_stages_through_the_container_executor(
    rootfs: Path, fixtures_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """LoRA, merge, the evaluations and CPT, each launched job in the root filesystem: the same stats as the same
    stages in-process, and every job's spec names only /store, /fixtures and /data."""
    monkeypatch.setenv("NEMOTRON_ROOTFS", str(rootfs))
    instance = dg.DagsterInstance.ephemeral()
    local = materialize(tmp_path / "local", "local_cpu", instance)
    monkeypatch.setenv("NEMOTRON_ARTIFACT_ROOT", str(tmp_path / "store"))  # the container profile's storage
    isolated = materialize(tmp_path / "store", "container", instance)
    assert local.success and isolated.success
    for name in MODEL_STAGES:
        (mine,) = isolated.asset_materializations_for_node(f"tiny__{name}")
        (theirs,) = local.asset_materializations_for_node(f"tiny__{name}")
        assert mine.metadata["data_version"] == theirs.metadata["data_version"], name  # versions ignore executors
        assert mine.metadata["launcher"].value == ("in_process" if name in IN_PROCESS else "container"), name
        for key, value in theirs.metadata.items():
            if isinstance(value, dg.FloatMetadataValue | dg.IntMetadataValue) and not key.endswith(TIMINGS):
                assert mine.metadata[key].value == pytest.approx(value.value, rel=1e-4, abs=1e-6), (name, key)
    streamed = [entry.user_message for entry in instance.all_logs(isolated.run_id)]
    assert any(message.startswith("step 29: loss") for message in streamed)  # the LoRA job's Pipes log
    jobs = list((tmp_path / "store" / ".nemotron-jobs").iterdir())
    assert len(jobs) == len(MODEL_STAGES) - len(IN_PROCESS)  # one job per launching stage, with its Pipes files


@needs_tools
def test_conversion_and_quantization_through_the_container_executor(
    rootfs: Path, fixtures_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """HF -> Megatron -> HF (Megatron-Bridge's AutoBridge, its dist-checkpoint saver spawning processes) and an FP8
    quantization (ModelOpt), each launched as a job in the root filesystem; the gates pass as in-process."""
    monkeypatch.setenv("NEMOTRON_ROOTFS", str(rootfs))
    monkeypatch.setenv("NEMOTRON_ARTIFACT_ROOT", str(tmp_path / "store"))
    model = str(fixtures_dir / "tiny-llama")
    stages = [
        {"name": "mcore", "step": "convert/hf_to_megatron", "consumes": {"checkpoint_hf": "model"}, "preset": "tiny"},
        {"name": "back", "step": "convert/megatron_to_hf", "consumes": {"checkpoint_megatron": "mcore"},
         "preset": "tiny", "config": {"hf_model_id": model}},
        {"name": "fp8", "step": "optimize/modelopt/quantize", "consumes": {"checkpoint_hf": "model",
         "training_jsonl": "chat"}, "preset": "tiny",
         "config": {"deploy_gpu": "H100", "args.calib_size": 8, "holdout_size": 8, "calib_max_tokens": 128}},
    ]  # fmt: skip
    sources = [
        {"name": "model", "type": "checkpoint_hf", "path": model},
        {"name": "chat", "type": "training_jsonl", "path": str(DATA / "tiny_chat.jsonl")},
    ]
    pipeline = PipelineSpec.parse({"name": "c", "description": "jobs", "sources": sources, "stages": stages})
    result = materialize_in_dagster(pipeline, tmp_path / "store", profile="container")
    assert result.success
    metadata = {
        e.step_key: {k: getattr(v, "value", v) for k, v in e.materialization.metadata.items()}
        for e in result.all_events
        if e.event_type_value == "ASSET_MATERIALIZATION"
    }
    assert {m["launcher"] for m in metadata.values()} == {"container"}
    assert metadata["c__mcore"]["round_trip_logit_difference"] == 0.0
    assert metadata["c__back"]["export_logit_difference"] < 1e-5
    assert metadata["c__fp8"]["recipe"] == "fp8" and metadata["c__fp8"]["nll_after"] > 0
