"""Hardware profiles (env_profiles/*.toml): where and how steps run. `NEMOTRON_PROFILE` picks the default.

A profile names its executor (local, slurm, k8s, lepton, dgxcloud), the hardware of a node, the container image
of each backend, mounts, the environment variables a job gets (names only: values are read from the submitting
environment at launch, never stored), and the executor's own section. Unknown keys are errors.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nemotron_assets.paths import PROJECT_ROOT
from nemotron_assets.tracking import Tracker

PROFILE_DIR = PROJECT_ROOT / "env_profiles"
DEFAULT_PROFILE = "local_cpu"
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
Executor = Literal["local", "container", "slurm", "k8s", "lepton", "dgxcloud"]
SECTIONED_EXECUTORS = ("container", "slurm", "k8s", "lepton", "dgxcloud")  # each with its own [section]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Gpu(Section):
    model: str = Field(description="e.g. H100, H200, A100, B200")
    memory_gb: int = Field(ge=1)


class Images(Section):
    """Container image per backend; None where the profile runs none of that backend's steps."""

    automodel: str | None = None
    megatron_bridge: str | None = None
    nemo_rl: str | None = None
    curator: str | None = None
    evaluator: str | None = None


class Storage(Section):
    """Where the artifact root and work directories are for a job, and how the job mounts them. The Dagster host
    sees the storage at `host_path` (the artifact root lies inside it); a job sees it at `job_path`."""

    host_path: str = Field(description="The shared storage as the Dagster host sees it; the artifact root is inside")
    job_path: str | None = Field(default=None, description="Where a job mounts it; None = the same path")
    pvc: str | None = Field(default=None, description="Kubernetes / DGX Cloud: the PersistentVolumeClaim holding it")
    volume: str | None = Field(default=None, description="Lepton: the storage the mount comes `from` (e.g. node-nfs:x)")

    @property
    def mount_path(self) -> str:
        return self.job_path or self.host_path


class ContainerSettings(Section):
    runtime: Literal["auto", "bwrap", "podman", "docker"] = Field(
        default="auto", description="auto: podman or docker where one runs here, else bubblewrap"
    )
    rootfs: str = Field(default="${NEMOTRON_ROOTFS}", description="bubblewrap's root filesystem (rootfs build)")


class SlurmSettings(Section):
    partition: str
    account: str | None = None
    time: str = Field(default="04:00:00", pattern=r"^(\d+-)?\d{1,2}:\d{2}:\d{2}$")
    host: str | None = Field(default=None, description="Login node reached over SSH; None = sbatch on this machine.")
    user: str | None = None
    cpus_per_task: int | None = Field(default=None, ge=1)
    mem: str | None = Field(default=None, description="sbatch --mem, e.g. 0 for all of a node's memory")
    exclusive: bool = False
    job_dir: str | None = Field(default=None, description="Shared directory for job scripts and logs.")


class K8sSettings(Section):
    namespace: str = "default"
    node_selector: dict[str, str] = {}
    tolerations: list[dict[str, str]] = []
    image_pull_secrets: list[str] = []
    service_account: str | None = None
    shm_size_gb: int = Field(default=64, ge=1, description="/dev/shm (a memory-backed emptyDir) for NCCL and loaders")
    pod_wait_timeout_s: int = Field(default=7 * 24 * 3600, ge=60, description="Multi-day training needs days.")


class LeptonSettings(Section):
    node_group: str
    resource_shape: str = Field(description="e.g. gpu.8xh100-80gb")
    shared_memory_size: int = Field(default=65536, ge=1, description="MiB")
    image_pull_secrets: list[str] = []
    mounts: list[dict[str, str]] = Field(default=[], description="{path, mount_path, from}")


class DgxCloudSettings(Section):
    base_url: str
    kube_apiserver_url: str
    project_name: str
    app_id_env: str = Field(default="DGXC_APP_ID", description="Name of the env var holding the app id")
    app_secret_env: str = Field(default="DGXC_APP_SECRET", description="Name of the env var holding the secret")
    pvcs: list[dict[str, str]] = Field(default=[], description="{name, path, claimName}")

    @field_validator("app_id_env", "app_secret_env")
    @classmethod
    def _env_name(cls, name: str) -> str:
        return _check_env_name(name)


class Profile(Section):
    """One hardware profile, validated."""

    name: str
    description: str
    executor: Executor
    nodes: int = Field(ge=1)
    gpus_per_node: int = Field(ge=0)
    gpu: Gpu | None = None
    interconnect: Literal["none", "nvlink", "infiniband", "ethernet"] = "none"
    cpus: int = Field(ge=1, description="CPUs per node")
    memory_gb: int = Field(ge=1, description="Memory per node")
    images: Images = Images()
    storage: Storage | None = Field(default=None, description="Required by every executor but local and container")
    mounts: list[str] = Field(
        default=[], description="More host:job paths a job mounts (read-only data, models); k8s: claim:path"
    )
    env_vars: list[str] = Field(default=[], description="Names of the variables a job gets; never values")
    gpu_hour_price: float | None = Field(
        default=None, ge=0, description="Price of one GPU-hour (any currency): materializations report their cost"
    )
    ray_address: str | None = Field(
        default=None,
        description="A running Ray cluster (ray.init's address) that Ray-based steps attach to; None = a local one",
    )
    tracking: Tracker | None = Field(
        default=None, description="Experiment tracker (mlflow or wandb) of runs on this profile; a pipeline's wins"
    )
    container: ContainerSettings | None = None
    slurm: SlurmSettings | None = None
    k8s: K8sSettings | None = None
    lepton: LeptonSettings | None = None
    dgxcloud: DgxCloudSettings | None = None

    @field_validator("env_vars")
    @classmethod
    def _env_names(cls, names: list[str]) -> list[str]:
        return [_check_env_name(name) for name in names]

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        if self.gpus_per_node and self.gpu is None:
            raise ValueError("gpus_per_node > 0 needs a [gpu] section (model, memory_gb)")
        for executor in SECTIONED_EXECUTORS:
            section = getattr(self, executor)
            if executor == self.executor and section is None:
                raise ValueError(f"executor {executor!r} needs a [{executor}] section")
            if executor != self.executor and section is not None:
                raise ValueError(f"[{executor}] section in a profile whose executor is {self.executor!r}")
        return self

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node


def _check_env_name(name: str) -> str:
    if not ENV_NAME.match(name):
        raise ValueError(f"{name!r} is not an environment variable name (profiles hold names, never values)")
    return name


def available_profiles(directory: Path = PROFILE_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.toml"))


def load_profile(name: str, directory: Path | None = None) -> Profile:
    """A profile from `directory`; by default $NEMOTRON_PROFILE_DIR (your own profiles, e.g. a local Slurm's) is
    searched before env_profiles/."""
    if directory is None:
        own = os.environ.get("NEMOTRON_PROFILE_DIR")
        directory = Path(own) if own and (Path(own) / f"{name}.toml").exists() else PROFILE_DIR
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
