"""Pipeline specs (YAML in this folder): external sources plus stages, each stage one catalog step.

Every edge is type-checked at load against the artifact lattice, so an ill-typed pipeline fails when the
code location loads, naming the edge, both types, and the step that would bridge them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from nemotron_assets.catalog import CATALOG
from nemotron_assets.catalog.models import StrictModel, check_value
from nemotron_assets.errors import step_error
from nemotron_assets.pipelines.bookends import check_roles, expand, pairs
from nemotron_assets.pipelines.models import Automation, Evaluation, PipelineError, Source, Stage
from nemotron_assets.tracking import Tracker

PIPELINE_DIR = Path(__file__).resolve().parent
_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")
PACKING = "data_prep/sft_packing"


class PipelineFields(StrictModel):
    """A pipeline as written (YAML, or a NemotronPipeline component's attributes), before it is type-checked."""

    name: str
    description: str
    sources: tuple[Source, ...] = ()
    stages: tuple[Stage, ...]
    evaluation: Evaluation | None = None
    automation: Automation | None = None
    tracking: Tracker | None = Field(None, description="Experiment tracker of the training and evaluation stages")


class PipelineSpec(PipelineFields):
    @classmethod
    def parse(cls, data: dict[str, Any]) -> PipelineSpec:
        """Build a spec, type-check it, and insert its evaluation section's bookends (type-checked too); every
        pipeline enters the project through here."""
        spec = cls.model_validate(data)
        seen: dict[str, str] = {}
        for source in spec.sources:
            spec._declare(seen, source.name, source.type)
        spec._check_stages(spec.stages, seen)
        check_roles(spec)
        stages = expand(spec)
        spec._check_stages([s for s in stages if s.name not in seen], seen)
        spec = spec.model_copy(update={"stages": stages})
        spec._check_partitions()
        spec._check_pack_sizes()
        return spec

    def _check_pack_sizes(self) -> None:
        """seq_length_mismatch before anything runs: bins packed in this pipeline must be as long as the sequences
        of the stage that trains on them (the trainer checks the bins' recorded pack_size again at launch)."""
        packers = {s.name: s for s in self.stages if s.step == PACKING}
        for stage in self.stages:
            packer = packers.get(stage.consumes.get("packed_parquet", ""))
            if packer is None:
                continue
            pack_size, seq_length = self.params(packer)["pack_size"], self.params(stage).get("seq_length")
            if seq_length and pack_size != seq_length:
                raise step_error(
                    PACKING,
                    "seq_length_mismatch",
                    f"stage {packer.name} packs to {pack_size} tokens, "
                    f"stage {stage.name} trains at seq_length {seq_length}",
                )

    def error(self, message: str) -> PipelineError:
        return PipelineError(f"pipeline {self.name}: {message}")

    def _declare(self, seen: dict[str, str], name: str, type_name: str) -> None:
        if not _NAME.match(name):
            raise self.error(f"artifact name {name!r} must match {_NAME.pattern}")
        if name in seen:
            raise self.error(f"artifact {name!r} is defined twice")
        seen[name] = type_name

    def _check_stages(self, stages: Sequence[Stage], seen: dict[str, str]) -> None:
        for stage in stages:
            self._check_stage(stage, seen)
            self._declare(seen, stage.name, CATALOG.step(stage.step).primary_output)

    def _check_stage(self, stage: Stage, seen: dict[str, str]) -> None:
        try:
            step = CATALOG.step(stage.step)
        except KeyError as e:
            raise self.error(f"stage {stage.name}: {e.args[0]}") from None
        if stage.preset not in step.presets:
            raise self.error(f"stage {stage.name}: step {step.id} has no preset {stage.preset!r}")
        for key, value in stage.config.items():
            if key not in {p.name for p in step.parameters}:
                raise self.error(f"stage {stage.name}: {step.id} has no parameter {key!r}")
            if value is not None:
                try:
                    check_value(step.parameter(key), value)
                except ValueError as e:
                    raise self.error(f"stage {stage.name}: {e}") from None
        ports = {p.type: p for p in step.consumes}
        for port_type, artifact in stage.consumes.items():
            if port_type not in ports:
                raise self.error(f"stage {stage.name}: {step.id} consumes no {port_type}")
            if artifact not in seen:
                raise self.error(f"stage {stage.name}: artifact {artifact!r} is not defined before it")
            have = seen[artifact]
            if not CATALOG.is_a(have, port_type):
                problem = [f"edge {artifact} -> {stage.name}: {artifact} is {have}, {step.id} consumes {port_type}"]
                problem += [f"{e.name}: {e.recovery}" for e in step.errors if e.fed and CATALOG.is_a(have, e.fed)]
                fixes = [s.id for s in CATALOG.find_steps(consumes=have, produces=port_type)]
                if fixes:
                    problem.append(f"insert {' or '.join(fixes)} between them")
                raise self.error("; ".join(problem))
        missing = [p.type for p in step.consumes if p.required and p.type not in stage.consumes]
        if missing:
            raise self.error(f"stage {stage.name}: {step.id} needs {missing}")

    def _check_partitions(self) -> None:
        """A partitioned stage consumes one partitioned artifact; a whole partitioned artifact goes only to a port
        that takes all its partitions."""
        for stage in self.stages:
            step = CATALOG.step(stage.step)
            roots = {self.partitions_of(name) for name in stage.consumes.values()} - {None}
            if stage.partitioned and len(roots) != 1:
                raise self.error(f"stage {stage.name} is partitioned, so it consumes one partitioned artifact")
            whole = [port.type for port in step.consumes if port.all_partitions]
            for port_type, name in stage.consumes.items():
                partitioned = self.partitions_of(name) is not None
                whole_ok = port_type in whole and self.source(name) is None  # sources go per partition
                if partitioned and not stage.partitioned and not whole_ok:
                    raise self.error(
                        f"stage {stage.name} consumes the partitioned {name} whole, but {step.id} takes one "
                        f"{port_type}: make the stage `partitioned: true` or combine the partitions first"
                    )

    def partitions_of(self, name: str) -> str | None:
        """The partitioned source whose partitions an artifact has (None: unpartitioned)."""
        source = self.source(name)
        if source is not None:
            return name if source.partitioned else None
        stage = self.stage(name)
        if not stage.partitioned:
            return None
        return next(filter(None, (self.partitions_of(n) for n in stage.consumes.values())), None)

    def artifact_type(self, name: str) -> str:
        for source in self.sources:
            if source.name == name:
                return source.type
        return CATALOG.step(self.stage(name).step).primary_output

    def source(self, name: str) -> Source | None:
        return next((s for s in self.sources if s.name == name), None)

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def bookends(self) -> list[tuple[Stage, Stage, Stage]]:
        """(target, before-eval, after-eval) for every stage whose evaluations sit on both sides of it."""
        return pairs(self)

    def params(self, stage: Stage) -> dict[str, Any]:
        """The stage's parameters (Stage.params)."""
        return stage.params()


def load_pipeline(path: Path) -> PipelineSpec:
    return PipelineSpec.parse(yaml.safe_load(path.read_text()))


def pipeline_dirs() -> list[Path]:
    """The shipped pipelines, plus directories listed in $NEMOTRON_PIPELINE_DIRS (separated by os.pathsep)."""
    extra = os.environ.get("NEMOTRON_PIPELINE_DIRS", "")
    return [PIPELINE_DIR, *(Path(d) for d in extra.split(os.pathsep) if d)]


def load_pipelines(directories: list[Path] | None = None) -> list[PipelineSpec]:
    directories = directories if directories is not None else pipeline_dirs()
    pipelines = [load_pipeline(p) for d in directories for p in sorted(d.glob("*.yaml"))]
    names = [p.name for p in pipelines]
    if len(set(names)) != len(names):
        raise PipelineError(f"duplicate pipeline names in {[str(d) for d in directories]}: {names}")
    return pipelines
