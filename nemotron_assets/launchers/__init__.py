"""Launchers: how a step's external process runs, chosen by the hardware profile's executor.

Steps only see `Launcher` (run this command to completion or raise). `local` runs it as a Dagster Pipes subprocess
on this machine; each remote executor submits it to its scheduler and streams the Pipes messages back.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable

import dagster as dg

from nemotron_assets.steps.launch import Launcher
from resources.profile import Profile

LauncherFactory = Callable[[dg.AssetExecutionContext, Profile, int], Launcher]  # (context, profile, GPUs per node)


def env_values(profile: Profile, names: list[str]) -> dict[str, str]:
    """The values of variables the profile names, read from this process's environment at launch."""
    missing = [name for name in names if name not in os.environ]
    if missing:
        raise ValueError(f"profile {profile.name} needs {missing} set in the submitting environment")
    return {name: os.environ[name] for name in names}


def pipes_subprocess(context: dg.AssetExecutionContext, profile: Profile, gpus: int) -> Launcher:
    """A Pipes subprocess on this machine: its logs and messages stream into the run."""

    def launch(command: list[str], env: dict[str, str]) -> None:
        dg.PipesSubprocessClient().run(context=context, command=command, env=env)

    return launch


# Remote launchers are imported when a run uses them ('module:factory'): nemo-run alone takes seconds to import.
LAUNCHERS: dict[str, LauncherFactory | str] = {
    "local": pipes_subprocess,
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
