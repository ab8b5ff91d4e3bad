"""Step implementations. Each step is `run(StepRun) -> StepResult`, free of Dagster, writing into `output_dir`."""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from nemotron_assets.catalog import StepSpec
from nemotron_assets.catalog.models import StepParams
from nemotron_assets.errors import NamedError, contract_error, step_error
from nemotron_assets.job import JobSpec, command, source_digest
from nemotron_assets.steps.launch import (
    LOCAL,
    InfrastructureFailure,
    Launcher,
    LaunchFailed,
    PathMap,
    image_error,
    subprocess_launcher,
)
from nemotron_assets.tracking import TrackedRun


@dataclass(frozen=True)
class InputArtifact:
    """An artifact a stage consumes: its pipeline name, type, location and data version; a partitioned artifact
    consumed whole lists its partitions (each named by its partition key) in `parts`."""

    name: str
    type: str
    path: Path
    version: str
    parts: tuple[InputArtifact, ...] = ()


@dataclass(frozen=True)
class StepRun:
    """Everything a step needs: parameters (typed: `p`), inputs by consumed type, where to write, how to launch.

    `output_dir` is the staging directory that is published; `work_dir` survives failed attempts of the same
    data version (training checkpoints live there, so a retried run resumes) and is removed after publication.
    """

    step: StepSpec
    params: dict[str, Any]
    inputs: dict[str, InputArtifact]
    output_dir: Path
    work_dir: Path | None = None
    gpus: int = 0  # GPUs of this node the step may use (from the hardware profile)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("nemotron_assets.steps"))
    launcher: Launcher | None = None
    cpus: int | None = None  # CPUs of this node the step may use (from the hardware profile); None = unknown
    profile: str = "local_cpu"  # the hardware profile's name, for steps whose configuration follows it
    paths: PathMap = LOCAL  # how a launched job sees this machine's paths (the profile's storage)
    nodes: int = 1  # nodes a launched job spans
    ray_address: str | None = None  # the profile's Ray cluster, which Ray-based steps attach to (steps/ray_cluster.py)
    tracking: TrackedRun | None = None  # the tracker run the step's library logs to, where one is named

    def tracking_env(self) -> dict[str, str]:
        """The tracker's environment for a job whose library logs to it (credentials by name, read now)."""
        return self.tracking.env() if self.tracking else {}

    def tracking_provenance(self) -> dict[str, Any]:
        """{"tracking": the run the step's library logged to}, where a tracker is named."""
        return {"tracking": self.tracking.record(self.work_dir)} if self.tracking else {}

    @cached_property
    def p(self) -> StepParams:
        """The typed parameters (`run.p.pack_size`, `run.p.peft.dim`), validated against the catalog; `params` stays
        the dotted dict that provenance, data versions and job specs record. An invalid value is invalid_parameter."""
        try:
            return self.step.typed_params(self.params)
        except ValueError as e:
            raise contract_error("invalid_parameter", f"{self.step.id}: {e}") from None

    def launch(self, command: list[str], env: dict[str, str] | None = None) -> None:
        """Run an external command to completion (Pipes from Dagster, a plain subprocess elsewhere)."""
        (self.launcher or subprocess_launcher(self.log))(command, env or {})

    def launch_job(
        self,
        backend: str,
        args: dict[str, Any],
        nproc_per_node: int = 1,
        torchrun: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        """Write the job spec into the work directory and run `python -m nemotron_assets.job` on it through the
        launcher; a failure the job recorded becomes the step's named error (or `oom`) where the step declares it."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        spec_path, failure = self.work_dir / f"job-{backend}.json", self.work_dir / "failure.json"
        failure.unlink(missing_ok=True)
        spec = JobSpec(
            step=self.step.id,
            backend=backend,
            args=self.paths.args(args),
            work_dir=self.paths.to_job(self.work_dir),
            failure_file=self.paths.to_job(failure),
            nproc_per_node=nproc_per_node,
            nnodes=self.nodes,
            torchrun=torchrun,
            source_digest=source_digest(),
        )
        spec_path.write_text(spec.model_dump_json(indent=1))
        try:
            self.launch(command(self.paths.to_job(spec_path)), env)
        except InfrastructureFailure:
            raise
        except Exception as e:  # the launcher's own error type differs (subprocess, Pipes, scheduler)
            if not failure.exists():
                raise image_error(e) from e
            raise self.job_failure(json.loads(failure.read_text())) from None

    def job_failure(self, recorded: dict[str, str]) -> Exception:
        """What a job recorded as its failure, as the step's named error where it declares one."""
        name, detail = recorded["error"], recorded["detail"]
        if name == "job_image_stale":
            return contract_error(name, detail)
        if any(error.name == name for error in self.step.errors):
            return self.error(name, detail[-500:])
        return LaunchFailed(detail)

    def error(self, name: str, detail: str) -> NamedError:
        return step_error(self.step.id, name, detail)

    def input(self, port_type: str) -> InputArtifact:
        return self.inputs[port_type]


@dataclass(frozen=True)
class StepResult:
    """What a step reports: stats for metadata, extra provenance (e.g. tokenizer fingerprints), and plots
    (title -> PNG file inside the artifact) shown with the materialization."""

    stats: dict[str, Any]
    provenance: dict[str, Any] = field(default_factory=dict)
    plots: dict[str, str] = field(default_factory=dict)


StepFunction = Callable[[StepRun], StepResult]


def step_function(step: StepSpec) -> StepFunction:
    """Import a step's `entry` ('module:function') on demand, so loading definitions stays light."""
    if step.entry is None:
        raise NotImplementedError(f"step {step.id} has no implementation in this project yet")
    module, _, name = step.entry.partition(":")
    return getattr(importlib.import_module(module), name)
