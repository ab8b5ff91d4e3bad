"""Launchers: how a step's external process runs, chosen by the hardware profile's executor.

Steps only see `Launcher` (run this command to completion or raise). `local` runs it as a Dagster Pipes subprocess
on this machine; each remote executor submits it to its scheduler and streams the Pipes messages back.
"""

from __future__ import annotations

from collections.abc import Callable

import dagster as dg

from nemotron_assets.launchers.cloud import cloud_launcher
from nemotron_assets.launchers.k8s import k8s_launcher
from nemotron_assets.launchers.slurm import slurm_launcher
from nemotron_assets.steps.launch import Launcher
from resources.profile import Profile


def pipes_subprocess(context: dg.AssetExecutionContext, profile: Profile) -> Launcher:
    """A Pipes subprocess on this machine: its logs and messages stream into the run."""

    def launch(command: list[str], env: dict[str, str]) -> None:
        dg.PipesSubprocessClient().run(context=context, command=command, env=env)

    return launch


LAUNCHERS: dict[str, Callable[[dg.AssetExecutionContext, Profile], Launcher]] = {"local": pipes_subprocess}
LAUNCHERS["slurm"] = slurm_launcher
LAUNCHERS.update(k8s=k8s_launcher, lepton=cloud_launcher, dgxcloud=cloud_launcher)


def launcher_for(context: dg.AssetExecutionContext, profile: Profile) -> Launcher:
    if profile.executor not in LAUNCHERS:
        raise NotImplementedError(f"no launcher for executor {profile.executor!r} yet (profile {profile.name})")
    return LAUNCHERS[profile.executor](context, profile)
