"""Kubernetes launcher: one pod per step through dagster-k8s's PipesK8sClient (logs and messages stream back).

The pod spec comes from the profile's [k8s] section: GPU requests (nvidia.com/gpu), node selector, tolerations,
a memory-backed /dev/shm, image pull secrets and service account. Env-var values are read from the submitting
environment only at launch and handed to the client; the spec itself names no values.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
from dagster_k8s import PipesK8sClient
from dagster_k8s.client import DagsterK8sError

from nemotron_assets.catalog import CATALOG
from nemotron_assets.launchers import env_values
from nemotron_assets.steps.launch import InfrastructureFailure, Launcher, LaunchFailed
from resources.profile import Profile

IMAGE_FIELD = {  # catalog step kind -> the profile's image for that backend
    "automodel": "automodel",
    "peft": "automodel",
    "megatron_bridge": "megatron_bridge",
    "modelopt": "megatron_bridge",
    "nemo_rl": "nemo_rl",
    "nemo_curator": "curator",
    "data_designer": "curator",
    "tokenizers": "curator",
    "python": "curator",
    "nemo_run": "curator",
    "lm_eval": "evaluator",
}
# What dagster-k8s reports when the cluster, not the step, ended a pod: deleted (node drained or lost, preempted),
# evicted, or never scheduled within the launch timeout.
INFRASTRUCTURE_SIGNS = ("was unexpectedly killed", "Evicted", "Timed out while waiting for pod to become ready")


def backend_image(profile: Profile, step_kind: str) -> str:
    """The image of a catalog step kind's backend; a profile without that backend's image cannot run it."""
    field = IMAGE_FIELD[step_kind]
    image = getattr(profile.images, field)
    if image is None:
        raise ValueError(f"profile {profile.name} has no images.{field} for {step_kind} steps")
    return image


def step_kind(context: dg.AssetExecutionContext) -> str:
    """The catalog kind of the step materializing this asset (asset metadata 'step')."""
    step_id = context.assets_def.specs_by_key[context.asset_key].metadata["step"]
    return CATALOG.step(step_id).kind


def pod_spec(profile: Profile, gpus: int) -> dict[str, Any]:
    """base_pod_spec (camelCase, as the Kubernetes API) for one step's pod with `gpus` GPUs; no env-var values."""
    k8s = profile.k8s
    limits = {"cpu": str(profile.cpus), "memory": f"{profile.memory_gb}Gi"}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [
            {
                "name": "step",
                "resources": {"limits": limits, "requests": dict(limits)},
                "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
            }
        ],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{k8s.shm_size_gb}Gi"}}],
        "nodeSelector": dict(k8s.node_selector),
        "tolerations": [dict(t) for t in k8s.tolerations],
        "imagePullSecrets": [{"name": name} for name in k8s.image_pull_secrets],
    }
    if k8s.service_account:
        spec["serviceAccountName"] = k8s.service_account
    return spec


def submit_env(profile: Profile, env: dict[str, str]) -> dict[str, str]:
    """The step's env plus the profile's named variables, valued from this process's environment now."""
    return env_values(profile, profile.env_vars) | env


def k8s_launcher(context: dg.AssetExecutionContext, profile: Profile, gpus: int, image: str | None = None) -> Launcher:
    """Run each command in a pod of the profile's namespace, waiting up to pod_wait_timeout_s for it."""

    def launch(command: list[str], env: dict[str, str]) -> None:
        step_image = image or backend_image(profile, step_kind(context))
        try:
            PipesK8sClient().run(
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

    return launch
