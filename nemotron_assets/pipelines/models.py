"""The parts of a pipeline spec as written in YAML: sources, stages, and the shared evaluation settings."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from nemotron_assets.catalog.models import StrictModel


class PipelineError(ValueError):
    """A pipeline spec does not type-check against the catalog."""


class Source(StrictModel):
    """An external input the pipeline does not produce: a corpus, a base model, a dataset."""

    name: str
    type: str
    path: str = Field(description="File, directory or glob; may use ${VAR} (e.g. ${NEMOTRON_DATA}).")
    description: str = ""


class Stage(StrictModel):
    """One catalog step producing the artifact `name` from the artifacts it consumes."""

    name: str
    step: str
    consumes: dict[str, str] = Field(default_factory=dict, description="consumed type -> artifact name")
    preset: str = "default"
    config: dict[str, Any] = Field(default_factory=dict)
    description: str = ""
    evaluate: bool = Field(True, description="false = no automatic eval bookends (so no quality gate) around it")


class Evaluation(StrictModel):
    """Eval bookends the pipeline inserts around every quality-changing stage, all with the same settings."""

    data: dict[str, str] = Field(default_factory=dict, description="eval data: consumed type -> artifact name")
    preset: str = "default"
    config: dict[str, Any] = Field(default_factory=dict, description="eval/model_eval parameters of every bookend")
    gate_tolerance: dict[str, float] = Field(
        default_factory=dict, description="stage or category -> gate tolerance; a stage's own entry wins"
    )
    names: dict[str, str] = Field(default_factory=dict, description="artifact -> name of its evaluation (eval_<it>)")
