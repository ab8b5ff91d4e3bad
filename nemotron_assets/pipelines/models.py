"""The parts of a pipeline spec as written in YAML: sources, stages, and the shared evaluation settings."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from nemotron_assets.catalog import CATALOG
from nemotron_assets.catalog.models import StrictModel

ArtifactType = Literal[tuple(CATALOG.types)]  # an unknown type is a schema error, reported at its line


class PipelineError(ValueError):
    """A pipeline spec does not type-check against the catalog."""


class Source(StrictModel):
    """An external input the pipeline does not produce: a corpus, a base model, a dataset."""

    name: str
    type: ArtifactType
    path: str = Field(description="File, directory or glob; may use ${VAR} (e.g. ${NEMOTRON_DATA}).")
    description: str = ""
    partitioned: bool = Field(
        False, description="true = `path` is a watched directory; each file or directory in it is one partition."
    )


class Stage(StrictModel):
    """One catalog step producing the artifact `name` from the artifacts it consumes."""

    name: str
    step: str
    consumes: dict[ArtifactType, str] = Field(default_factory=dict, description="consumed type -> artifact name")
    preset: str = "default"
    config: dict[str, Any] = Field(default_factory=dict)
    description: str = ""
    evaluate: bool = Field(True, description="false = no automatic eval bookends (so no quality gate) around it")
    partitioned: bool = Field(
        False, description="true = one artifact per partition of the partitioned artifact it consumes"
    )

    def params(self) -> dict[str, Any]:
        """The stage's parameters: step defaults, then its preset, then its config."""
        return CATALOG.step(self.step).preset_values(self.preset) | self.config


class Evaluation(StrictModel):
    """Eval bookends the pipeline inserts around every quality-changing stage, all with the same settings."""

    data: dict[ArtifactType, str] = Field(default_factory=dict, description="eval data: consumed type -> artifact name")
    preset: str = "default"
    config: dict[str, Any] = Field(default_factory=dict, description="eval/model_eval parameters of every bookend")
    gate_tolerance: dict[str, float] = Field(
        default_factory=dict, description="stage or category -> gate tolerance; a stage's own entry wins"
    )
    names: dict[str, str] = Field(default_factory=dict, description="artifact -> name of its evaluation (eval_<it>)")


class Automation(StrictModel):
    """When the pipeline refreshes itself: GPU stages on a schedule, cheap data stages when their inputs change."""

    cron: str = Field(description="Cron of the schedule running the GPU stages; may use ${VAR}.")
    timezone: str = "UTC"
    max_runtime_hours: float = Field(24, description="dagster/max_runtime of a scheduled run")
    max_retries: int = Field(1, description="dagster/max_retries of a scheduled run (infrastructure failures)")
    freshness_hours: float = Field(
        192, description="A promoted checkpoint older than this fails its freshness policy (default: 8 days)"
    )
