"""Step implementations. Each step is `run(StepRun) -> StepResult`, free of Dagster, writing into `output_dir`."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nemotron_assets.catalog import StepSpec
from nemotron_assets.errors import NamedError, step_error
from nemotron_assets.steps.launch import Launcher, subprocess_launcher


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
    """Everything a step needs: resolved parameters, inputs by consumed type, where to write, how to launch.

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

    def launch(self, command: list[str], env: dict[str, str] | None = None) -> None:
        """Run an external command to completion (Pipes from Dagster, a plain subprocess elsewhere)."""
        (self.launcher or subprocess_launcher(self.log))(command, env or {})

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
