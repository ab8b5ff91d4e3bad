"""Launchers: how a step's external process runs, chosen by the hardware profile's executor.

Steps only see `Launcher` (run this command to completion or raise, returning what was `Measured` of the job: the
peak GPU memory it reported over Pipes, and GPU-hours where the scheduler records them). `local` runs it as a
Dagster Pipes subprocess on this machine; each remote executor submits it to its scheduler and streams the Pipes
messages back.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
from dagster_pipes import encode_param

from nemotron_assets.errors import contract_error
from nemotron_assets.paths import expand
from nemotron_assets.steps.launch import Launcher, Measured, PathMap, local_env, measured
from resources.profile import Profile

LauncherFactory = Callable[[dg.AssetExecutionContext, Profile, int], Launcher]  # (context, profile, GPUs per node)


def env_values(profile: Profile, names: list[str]) -> dict[str, str]:
    """The values of variables the profile names, read from this process's environment at launch."""
    missing = [name for name in names if name not in os.environ]
    if missing:
        raise ValueError(f"profile {profile.name} needs {missing} set in the submitting environment")
    return {name: os.environ[name] for name in names}


def job_paths(profile: Profile, artifact_root: Path | None = None) -> PathMap:
    """How this profile's jobs see the host's paths: the storage (which must hold the artifact root) and the
    profile's host:job mounts. A local job sees this machine as it is. storage_unreachable before anything is
    submitted."""
    if profile.executor == "local":
        return PathMap()
    storage = profile.storage
    if storage is None:
        raise contract_error("storage_unreachable", f"profile {profile.name} ({profile.executor}) has no [storage]")
    host = os.path.abspath(expand(storage.host_path))
    root = os.path.abspath(artifact_root or host)
    if os.path.commonpath([root, host]) != host:
        raise contract_error(
            "storage_unreachable", f"artifact root {root} is outside profile {profile.name}'s storage {host}"
        )
    mounts = [] if profile.executor == "k8s" else [tuple(expand(mount).split(":", 1)) for mount in profile.mounts]
    return PathMap(((host, expand(storage.mount_path)), *mounts))


def storage_source(profile: Profile, field: str) -> str:
    """What the executor mounts the storage from (`pvc`, `volume`); storage_unreachable without it."""
    source = getattr(profile.storage, field) if profile.storage else None
    if source is None:
        raise contract_error("storage_unreachable", f"profile {profile.name}: [storage] needs the {field} holding it")
    return source


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


def backend_image(profile: Profile, step_kind: str) -> str:
    """The image of a catalog step kind's backend; a profile without that backend's image cannot run it."""
    field = IMAGE_FIELD[step_kind]
    image = getattr(profile.images, field)
    if image is None:
        raise ValueError(f"profile {profile.name} has no images.{field} for {step_kind} steps")
    return image


def step_kind(context: dg.AssetExecutionContext) -> str:
    """The catalog kind of the step materializing this asset (asset metadata 'step')."""
    from nemotron_assets.catalog import CATALOG

    step_id = context.assets_def.specs_by_key[context.asset_key].metadata["step"]
    return CATALOG.step(step_id).kind


@contextlib.contextmanager
def storage_pipes(
    context: dg.AssetExecutionContext, directory: Path, paths: PathMap
) -> Iterator[tuple[dict[str, str], dg.PipesSession]]:
    """A Pipes session over files in `directory` on the shared storage; yields the job's bootstrap variables, whose
    paths are the job's, and the session (its custom messages are all read once the block has ended)."""
    with dg.open_pipes_session(
        context=context,
        context_injector=dg.PipesFileContextInjector(str(directory / "pipes_context.json")),
        message_reader=dg.PipesFileMessageReader(str(directory / "pipes_messages.jsonl")),
    ) as session:
        yield (
            {
                name: encode_param({k: paths.to_job(v) if k == "path" else v for k, v in params.items()})
                for name, params in session.get_bootstrap_params().items()
            },
            session,
        )


def pipes_subprocess(context: dg.AssetExecutionContext, profile: Profile, gpus: int) -> Launcher:
    """A Pipes subprocess on this machine, in this environment: its logs and messages stream into the run."""

    def launch(command: list[str], env: dict[str, str]) -> Measured:
        invocation = dg.PipesSubprocessClient().run(context=context, command=command, env=local_env(env))
        return measured(invocation.get_custom_messages())

    return launch


# Remote launchers are imported when a run uses them ('module:factory'): nemo-run alone takes seconds to import.
LAUNCHERS: dict[str, LauncherFactory | str] = {
    "local": pipes_subprocess,
    "container": "nemotron_assets.launchers.container:container_launcher",
    "slurm": "nemotron_assets.launchers.slurm:slurm_launcher",
    "k8s": "nemotron_assets.launchers.k8s:k8s_launcher",
    "lepton": "nemotron_assets.launchers.cloud:cloud_launcher",
    "dgxcloud": "nemotron_assets.launchers.cloud:cloud_launcher",
}


def launcher_factory(executor: str) -> LauncherFactory:
    factory = LAUNCHERS[executor]
    if isinstance(factory, str):
        module, _, name = factory.partition(":")
        return getattr(importlib.import_module(module), name)
    return factory


def launcher_for(context: dg.AssetExecutionContext, profile: Profile, gpus: int) -> Launcher:
    """The profile's launcher for a step that may use `gpus` GPUs per node (guardrails.gpus_for decides)."""
    return launcher_factory(profile.executor)(context, profile, gpus)
