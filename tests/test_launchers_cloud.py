"""Kubernetes pod specs (dagster-k8s + kubernetes client models) and Lepton / DGX Cloud executors (nemo-run)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import nemo_run as run
import pytest
from dagster_k8s import PipesK8sClient
from dagster_k8s.client import DagsterK8sError
from dagster_k8s.pipes import build_pod_body
from kubernetes.client import ApiClient, V1Pod

from nemotron_assets.catalog import CATALOG
from nemotron_assets.guardrails import gpus_for
from nemotron_assets.launchers import cloud, k8s, launcher_factory
from nemotron_assets.steps.launch import InfrastructureFailure, LaunchFailed, Measured
from resources.profile import load_profile

SECRET = "s3cr3t-value-planted-by-the-test"


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ["HF_TOKEN", "WANDB_API_KEY", "LEPTON_WORKSPACE_ID", "LEPTON_TOKEN", "DGXC_APP_ID", "DGXC_APP_SECRET"]:
        monkeypatch.setenv(name, SECRET)


def pod(gpus: int) -> V1Pod:
    """The pod dagster-k8s would create, round-tripped through the kubernetes client's JSON (de)serializer."""
    profile = load_profile("k8s")
    image = k8s.backend_image(profile, "automodel")
    body = build_pod_body("p", image, ["torchrun", "train.py"], {}, None, k8s.pod_spec(profile, gpus))
    api = ApiClient()
    return api._ApiClient__deserialize(api.sanitize_for_serialization(body), "V1Pod")


def test_registered():
    assert launcher_factory("k8s") is k8s.k8s_launcher
    assert launcher_factory("lepton") is launcher_factory("dgxcloud") is cloud.cloud_launcher


def test_pod_spec_validates_against_kubernetes_models(secrets):
    spec = pod(gpus=8).spec
    (container,) = spec.containers
    assert container.image == "nvcr.io/nvidia/nemo-automodel:26.04" and container.command == ["torchrun", "train.py"]
    assert container.resources.limits == {"cpu": "96", "memory": "1000Gi", "nvidia.com/gpu": "8"}
    assert container.resources.requests == container.resources.limits
    assert spec.node_selector == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    (toleration,) = spec.tolerations
    assert (toleration.key, toleration.operator, toleration.effect) == ("nvidia.com/gpu", "Exists", "NoSchedule")
    shm, storage = spec.volumes
    assert (shm.name, shm.empty_dir.medium, shm.empty_dir.size_limit) == ("dshm", "Memory", "64Gi")
    assert storage.persistent_volume_claim.claim_name == "nemotron-data"  # the profile's [storage] pvc
    assert [(m.name, m.mount_path) for m in container.volume_mounts] == [("dshm", "/dev/shm"), (storage.name, "/data")]
    assert [s.name for s in spec.image_pull_secrets] == ["ngc-registry"]
    assert spec.restart_policy == "Never"
    assert SECRET not in json.dumps(ApiClient().sanitize_for_serialization(spec))


def test_cpu_steps_request_no_gpus():
    profile = load_profile("k8s")
    assert k8s.backend_image(profile, "nemo_curator").endswith("nemo-curator:26.02")
    gpus = gpus_for(CATALOG.step("curate/nemo_curator"), profile)  # the one decision every launcher follows
    assert gpus == 0 and "nvidia.com/gpu" not in pod(gpus).spec.containers[0].resources.limits


def test_launch_passes_values_only_to_the_client(secrets, monkeypatch: pytest.MonkeyPatch):
    calls = []
    reported = SimpleNamespace(get_custom_messages=lambda: [{"peak_gpu_memory_gb": 3.5}])
    monkeypatch.setattr(PipesK8sClient, "run", lambda self, **kwargs: calls.append(kwargs) or reported)
    launched = k8s.k8s_launcher(None, load_profile("k8s"), 8, image="img:1")(["python", "-c", "0"], {"STEP": "1"})
    assert launched == Measured(None, "pod", 3.5)  # the job's peak; no pod was read back from this stand-in
    (call,) = calls
    assert call["pod_wait_timeout"] == 604800 and call["namespace"] == "nemotron"
    assert call["env"] == {"HF_TOKEN": SECRET, "WANDB_API_KEY": SECRET, "STEP": "1"}
    assert SECRET not in json.dumps(call["base_pod_spec"])
    body = build_pod_body("p", call["image"], call["command"], call["env"], None, call["base_pod_spec"])
    container = ApiClient().sanitize_for_serialization(body)["spec"]["containers"][0]
    assert {"name": "HF_TOKEN", "value": SECRET} in container["env"]


@pytest.mark.parametrize(
    ("message", "raised"),
    [
        ('Pod "p" was unexpectedly killed', InfrastructureFailure),
        ("Pod p terminated but some containers exited with errors: reason Evicted", InfrastructureFailure),
        ("Timed out while waiting for pod to become ready with pod info: ...", InfrastructureFailure),
        ("Pod p terminated but some containers exited with errors: exit code 1", LaunchFailed),
    ],
)
def test_pods_lost_to_the_cluster_are_infrastructure_failures(secrets, monkeypatch, message: str, raised: type):
    def fail(self, **kwargs):
        raise DagsterK8sError(message)

    monkeypatch.setattr(PipesK8sClient, "run", fail)
    with pytest.raises(raised, match=message[:20]):
        k8s.k8s_launcher(None, load_profile("k8s"), 8, image="img:1")(["python", "-c", "0"], {})


def finished_pod(gpus: int, main_container: dict, start_time: str = "2026-03-01T10:00:00Z") -> V1Pod:
    """Our pod as GET /api/v1/namespaces/{ns}/pods/{name} returns it (JSON, deserialized by the kubernetes client),
    with `main_container`'s status."""
    profile = load_profile("k8s")
    body = build_pod_body("p", "img:1", ["python"], {}, None, k8s.pod_spec(profile, gpus))
    returned = ApiClient().sanitize_for_serialization(body) | {
        "status": {
            "phase": "Succeeded",
            "startTime": start_time,
            "containerStatuses": [
                {"name": body.spec.containers[0].name, "image": "img:1", "imageID": "", "ready": False}
                | {"restartCount": 0, **main_container}
            ],
        }
    }
    return ApiClient().deserialize(SimpleNamespace(data=json.dumps(returned)), "V1Pod")


def terminated(started: str | None) -> dict:
    state = {"exitCode": 0, "reason": "Completed", "finishedAt": "2026-03-01T11:32:00Z"}
    return {"state": {"terminated": state | ({"startedAt": started} if started else {})}}


def test_gpu_hours_from_the_pod_timestamps():
    """The main container's run time (not the pod's scheduling and image pull) x the GPUs the pod requested."""
    assert k8s.pod_gpu_hours(finished_pod(8, terminated("2026-03-01T10:02:00Z"))) == 8 * 1.5
    assert k8s.pod_gpu_hours(finished_pod(8, terminated(None))) == 8 * 92 / 60  # from the pod's start time
    assert k8s.pod_gpu_hours(finished_pod(0, terminated("2026-03-01T10:02:00Z"))) == 0
    running = {"state": {"running": {"startedAt": "2026-03-01T10:02:00Z"}}}
    assert k8s.pod_gpu_hours(finished_pod(8, running)) is None


def test_the_pod_is_read_back_only_once_it_terminated():
    pod = finished_pod(4, terminated("2026-03-01T11:02:00Z"))
    client = SimpleNamespace(core_api=SimpleNamespace(read_namespaced_pod=lambda name, namespace: pod))
    pipes = k8s.PodReadingK8sClient(message_reader=dg.PipesFileMessageReader("unused"))  # no pod-log streaming
    where = {"context": None, "client": client, "namespace": "nemotron", "pod_name": "p"}
    with pytest.raises(DagsterK8sError), pipes.consume_pod_logs(**where):
        raise DagsterK8sError("Pod p terminated but some containers exited with errors")  # as run's wait raises
    assert pipes.pod is None
    with pipes.consume_pod_logs(**where):
        pass
    assert k8s.pod_gpu_hours(pipes.pod) == 4 * 0.5


def test_launch_refuses_unset_env_vars(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(ValueError, match="HF_TOKEN"):
        k8s.submit_env(load_profile("k8s"), {})


def test_lepton_executor(secrets):
    profile = load_profile("lepton")
    ex = cloud.lepton_executor(profile, "img:1", 8, {"STEP": "1"})
    assert isinstance(ex, run.LeptonExecutor)
    assert (ex.container_image, ex.nodes, ex.gpus_per_node, ex.nprocs_per_node) == ("img:1", 1, 8, 8)
    assert (ex.resource_shape, ex.node_group, ex.shared_memory_size) == ("gpu.8xh100-80gb", "my-node-group", 65536)
    assert ex.mounts == [{"path": "/", "mount_path": "/mnt/lustre-shared", "from": "node-nfs:amlfs"}]
    assert ex.image_pull_secrets == ["ngc-registry"] and ex.nemo_run_dir == "/mnt/lustre-shared/nemo_run"
    assert ex.env_vars["HF_TOKEN"] == SECRET and ex.env_vars["STEP"] == "1"
    assert ex.nnodes() == 1 and ex.nproc_per_node() == 8
    cpu = cloud.lepton_executor(profile, "img:1", 0, {})
    assert (cpu.gpus_per_node, cpu.nprocs_per_node, cpu.resource_shape) == (0, 1, "cpu.large")


def test_dgxcloud_executor_reads_credentials_from_named_vars(secrets, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DGXC_APP_ID", "app-id")
    ex = cloud.dgxcloud_executor(load_profile("dgxcloud"), "img:1", 8, {})
    assert isinstance(ex, run.DGXCloudExecutor)
    assert (ex.client_id, ex.client_secret, ex.project_name) == ("app-id", SECRET, "nemotron")
    assert ex.pvcs == [{"name": "storage", "path": "/workspace", "claimName": "nemotron-workspace"}]
    assert (ex.pvc_nemo_run_dir, ex.nodes, ex.gpus_per_node, ex.nprocs_per_node) == ("/workspace/nemo_run", 1, 8, 8)
    monkeypatch.delenv("DGXC_APP_SECRET")
    with pytest.raises(ValueError, match="DGXC_APP_SECRET"):
        cloud.dgxcloud_executor(load_profile("dgxcloud"), "img:1", 8, {})


@pytest.mark.parametrize("name", ["lepton", "dgxcloud"])
def test_dryrun_through_nemo_run(secrets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str):
    """The real Experiment prepares the job (script + executor config); nothing is left on disk afterwards."""
    monkeypatch.setenv("NEMORUN_HOME", str(tmp_path))
    prepared: dict[str, str] = {}
    dryrun = run.Experiment.dryrun

    def keep(exp, **kwargs):
        dryrun(exp, **kwargs | {"delete_exp_dir": False})
        prepared.update({p.name: p.read_text() for p in Path(exp._exp_dir).rglob("*") if p.is_file()})
        prepared["dir"] = exp._exp_dir

    monkeypatch.setattr(run.Experiment, "dryrun", keep)
    executor = cloud.EXECUTORS[name](load_profile(name), "img:1", 8, {})
    cloud.submit(executor, ["python", "-m", "train", "--config", "c.yaml"], title="nemotron-test", dryrun=True)
    assert "python -m train --config c.yaml" in prepared["step.sh"]
    assert "container_image: img:1" in prepared["step_executor.yaml"]
    assert SECRET in prepared["step_executor.yaml"]  # nemo-run stores env values: hence the temporary directory
    assert not any(tmp_path.rglob("*")) and not Path(prepared["dir"]).exists()


def test_nemo_run_outcomes():
    assert cloud.outcome("t", {"step": "AppState.SUCCEEDED"}) is None
    assert isinstance(cloud.outcome("t", {"step": "AppState.FAILED"}), LaunchFailed)
    assert isinstance(cloud.outcome("t", {"step": "AppState.CANCELLED"}), InfrastructureFailure)
    assert isinstance(cloud.outcome("t", {}), LaunchFailed)  # nothing ran
