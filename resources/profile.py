"""Hardware profiles (env_profiles/*.toml): where and how steps run. `NEMOTRON_PROFILE` picks the default."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import BaseModel, ConfigDict, Field

from nemotron_assets.paths import PROJECT_ROOT

PROFILE_DIR = PROJECT_ROOT / "env_profiles"
DEFAULT_PROFILE = "local_cpu"


class Profile(BaseModel):
    """One hardware profile, validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str
    executor: Literal["local", "slurm", "k8s", "lepton", "dgxcloud"]
    nodes: int = Field(ge=1)
    gpus_per_node: int = Field(ge=0)
    cpus: int = Field(ge=1, description="CPUs per node")
    memory_gb: int = Field(ge=1, description="Memory per node")

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node


def available_profiles(directory: Path = PROFILE_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.toml"))


def load_profile(name: str, directory: Path = PROFILE_DIR) -> Profile:
    path = directory / f"{name}.toml"
    if not path.exists():
        raise ValueError(f"unknown hardware profile {name!r}; available: {available_profiles(directory)}")
    with path.open("rb") as f:
        return Profile(name=name, **tomllib.load(f))


class HardwareProfile(dg.ConfigurableResource):
    """The run's hardware profile, chosen per run in the Launchpad; defaults to $NEMOTRON_PROFILE or local_cpu."""

    name: str = Field(
        default_factory=lambda: os.environ.get("NEMOTRON_PROFILE", DEFAULT_PROFILE),
        description=f"A profile in env_profiles/: {', '.join(available_profiles())}.",
    )

    def load(self) -> Profile:
        return load_profile(self.name)
