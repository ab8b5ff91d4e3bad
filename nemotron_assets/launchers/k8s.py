"""Kubernetes launcher: one pod per step through dagster-k8s's PipesK8sClient (logs and messages stream back).

The pod spec comes from the profile's [k8s] section: GPU requests (nvidia.com/gpu), node selector, tolerations,
a memory-backed /dev/shm, the storage's PersistentVolumeClaim (and each `claim:path` of the profile's mounts) at the
path the job sees it, image pull secrets and service account. The job's Pipes context comes in an env var and
its messages through the pod's log (PipesK8sClient's defaults). Env-var values are read from the submitting
environment only at launch and handed to the client; the spec itself names no values. The terminated pod is read
before the client deletes it: its main container's run time x the GPUs it requested are the step's GPU-hours.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import dagster as dg
from dagster_k8s import PipesK8sClient
from dagster_k8s.client import DagsterK8sError, DagsterKubernetesClient
from kubernetes.client import V1Container, V1Pod

from nemotron_assets.launchers import backend_image, env_values, step_kind, storage_source
from nemotron_assets.steps.launch import InfrastructureFailure, Launcher, LaunchFailed, Measured, measured
from resources.profile import Profile

# What dagster-k8s reports when the cluster, not the step, ended a pod: deleted (node drained or lost, preempted),
# evicted, or never scheduled within the launch timeout.
INFRASTRUCTURE_SIGNS = ("was unexpectedly killed", "Evicted", "Timed out while waiting for pod to become ready")
GPU_RESOURCE = "nvidia.com/gpu"


def pod_spec(profile: Profile, gpus: int) -> dict[str, Any]:
    """base_pod_spec (camelCase, as the Kubernetes API) for one step's pod with `gpus` GPUs; no env-var values."""
    k8s = profile.k8s
    claims = volume_claims(profile)
    limits = {"cpu": str(profile.cpus), "memory": f"{profile.memory_gb}Gi"}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [
            {
                "name": "step",
                "resources": {"limits": limits, "requests": dict(limits)},
                "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}]
                + [{"name": name, "mountPath": path} for name, _, path in claims],
            }
        ],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{k8s.shm_size_gb}Gi"}}]
        + [{"name": name, "persistentVolumeClaim": {"claimName": claim}} for name, claim, _ in claims],
        "nodeSelector": dict(k8s.node_selector),
        "tolerations": [dict(t) for t in k8s.tolerations],
        "imagePullSecrets": [{"name": name} for name in k8s.image_pull_secrets],
    }
    if k8s.service_account:
        spec["serviceAccountName"] = k8s.service_account
    return spec


def volume_claims(profile: Profile) -> list[tuple[str, str, str]]:
    """(volume name, claim, mount path) of the storage's PVC and of each `claim:path` in the profile's mounts."""
    own = (storage_source(profile, "pvc"), profile.storage.mount_path)
    pairs = [own, *(tuple(mount.split(":", 1)) for mount in profile.mounts)]
    return [(f"storage-{i}", claim, path) for i, (claim, path) in enumerate(pairs)]


def requested_gpus(container: V1Container) -> int:
    """The GPUs a container requested (its limits, which requests of an extended resource must equal)."""
    resources = container.resources
    amounts = (resources.limits or resources.requests or {}) if resources else {}
    return int(amounts.get(GPU_RESOURCE, 0))


def pod_gpu_hours(pod: V1Pod) -> float | None:
    """GPU-hours of a terminated pod: its main (first) container's run time, from its terminated state's
    started_at (the pod's start_time where that is missing) to finished_at, x the GPUs the pod's containers
    requested; None while the main container has not terminated."""
    main = pod.spec.containers[0].name
    status = next((s for s in pod.status.container_statuses or [] if s.name == main), None)
    ended = status.state.terminated if status and status.state else None
    if ended is None or ended.finished_at is None:
        return None
    seconds = (ended.finished_at - (ended.started_at or pod.status.start_time)).total_seconds()
    return seconds * sum(requested_gpus(c) for c in pod.spec.containers) / 3600


class PodReadingK8sClient(PipesK8sClient):
    """PipesK8sClient that keeps the pod as the API reports it once terminated, before `run` deletes it."""

    pod: V1Pod | None = None

    @contextlib.contextmanager
    def consume_pod_logs(self, client: DagsterKubernetesClient, namespace: str, pod_name: str, **kw) -> Iterator:
        # `run` waits for the pod to terminate inside this block and deletes it after; reached only if it terminated
        with super().consume_pod_logs(client=client, namespace=namespace, pod_name=pod_name, **kw):
            yield
        self.pod = client.core_api.read_namespaced_pod(pod_name, namespace)


def submit_env(profile: Profile, env: dict[str, str]) -> dict[str, str]:
    """The step's env plus the profile's named variables, valued from this process's environment now."""
    return env_values(profile, profile.env_vars) | env


def k8s_launcher(context: dg.AssetExecutionContext, profile: Profile, gpus: int, image: str | None = None) -> Launcher:
    """Run each command in a pod of the profile's namespace, waiting up to pod_wait_timeout_s for it."""

    def launch(command: list[str], env: dict[str, str]) -> Measured:
        step_image = image or backend_image(profile, step_kind(context))
        pipes = PodReadingK8sClient()
        try:
            invocation = pipes.run(
                context=context,
                image=step_image,
                command=command,
                namespace=profile.k8s.namespace,
                env=submit_env(profile, env),
                base_pod_spec=pod_spec(profile, gpus),
                pod_wait_timeout=profile.k8s.pod_wait_timeout_s,
            )
        except DagsterK8sError as e:
            lost = any(sign in str(e) for sign in INFRASTRUCTURE_SIGNS)
            raise (InfrastructureFailure if lost else LaunchFailed)(str(e)) from e
        return measured(invocation.get_custom_messages(), pipes.pod and pod_gpu_hours(pipes.pod), "pod")

    return launch
