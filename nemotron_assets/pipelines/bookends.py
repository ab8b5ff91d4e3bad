"""Eval bookends: the evaluations on both sides of a quality-changing stage, and those an `evaluation:` section adds.

A stage's `after` is the eval with role after and that target. Its `before` is the eval with role before and that
target, or the one naming it `also_before`, or else any before/after eval scoring the checkpoint the stage starts
from: one evaluation of a model serves every stage that starts from it. The evaluation section inserts, for each
quality-changing stage whose checkpoint eval/model_eval can score, the evaluations still missing: `eval_<artifact>`
(or `evaluation.names[artifact]`), all with the section's data, preset and config. A stage that makes a Megatron
checkpoint is scored through the convert/megatron_to_hf stage that exports it (its after-evaluation scores that
export; the conversion gets no bookends of its own).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nemotron_assets.catalog import CATALOG
from nemotron_assets.gates import DEFAULT_TOLERANCE, QUALITY_CATEGORIES
from nemotron_assets.pipelines.models import Stage

if TYPE_CHECKING:
    from collections.abc import Sequence

    from nemotron_assets.pipelines import PipelineSpec

EVAL = "eval/model_eval"
CHECKPOINTS = ("checkpoint_lora", "checkpoint_hf", "checkpoint_megatron")
SCORABLE = ("checkpoint_hf", "checkpoint_lora")  # a Megatron checkpoint is scored after its conversion to HF
PER_BOOKEND = ("role", "target", "also_before", "gate_tolerance", "model", "endpoint_url")


def scorable_port(type_name: str) -> str | None:
    """The eval/model_eval input an artifact of this type is scored through (None: it cannot be scored)."""
    return next((port for port in SCORABLE if CATALOG.is_a(type_name, port)), None)


def model_path(stage: Stage) -> str | None:
    """The path or id a stage loads its starting weights from by parameter (None: none, or from scratch)."""
    params = stage.params()
    if params.get("load_weights") is False:
        return None
    names = CATALOG.step(stage.step).model_parameters("weights")
    return next((params[name] for name in names if params.get(name)), None)


def starting_point(spec: PipelineSpec, stage: Stage) -> str | None:
    """The artifact holding the model a stage starts from: its consumed checkpoint (the step's first checkpoint
    input), or the checkpoint source at its model parameter's path; None when no artifact holds it."""
    step = CATALOG.step(stage.step)
    port = next((p.type for p in step.consumes if p.type in CHECKPOINTS and p.type in stage.consumes), None)
    if port is not None:
        return stage.consumes[port]
    path = model_path(stage)
    return next((s.name for s in spec.sources if path and s.path == path and scorable_port(s.type)), None)


def after_eval(spec: PipelineSpec, stages: Sequence[Stage], target: str) -> Stage | None:
    """The eval scoring what `target` produced, for its gate."""
    return next((e for e in stages if e.step == EVAL and _role(spec, e) == ("after", target)), None)


def before_eval(spec: PipelineSpec, stages: Sequence[Stage], target: Stage) -> Stage | None:
    """The eval scoring what `target` starts from: named for it (role before, or also_before), else any bookend
    eval of its starting checkpoint."""
    evals = [e for e in stages if e.step == EVAL]
    named = [e for e in evals if _role(spec, e) == ("before", target.name) or _also_before(spec, e) == target.name]
    start = starting_point(spec, target)
    scoring = [e for e in evals if _role(spec, e)[0] in ("before", "after") and start in _scored(e)]
    return next(iter(named + scoring), None)


def check_roles(spec: PipelineSpec) -> None:
    """Every before/after eval names its target, and targets and `also_before` are stages of the pipeline."""
    names = {s.name for s in spec.stages}
    for stage in (s for s in spec.stages if s.step == EVAL):
        params = spec.params(stage)
        if params["role"] != "standalone" and not params["target"]:
            raise spec.error(f"eval {stage.name}: role {params['role']} needs `target: <stage>`")
        for key in ("target", "also_before"):
            if params[key] and params[key] not in names:
                raise spec.error(f"eval {stage.name}: {key} {params[key]!r} is not a stage of this pipeline")


def pairs(spec: PipelineSpec) -> list[tuple[Stage, Stage, Stage]]:
    """(target, before-eval, after-eval) for every stage with evaluations on both sides of it."""
    result = []
    for after in (s for s in spec.stages if s.step == EVAL and spec.params(s)["role"] == "after"):
        target = spec.stage(spec.params(after)["target"])
        before = before_eval(spec, spec.stages, target)
        if before is not None:
            result.append((target, before, after))
    return result


def expand(spec: PipelineSpec) -> tuple[Stage, ...]:
    """The spec's stages with the evaluation section's missing bookends inserted beside their targets."""
    if spec.evaluation is None:
        return spec.stages
    _check_section(spec)
    index = {s.name: i for i, s in enumerate(spec.stages)}
    stages = list(spec.stages)
    placed = [(float(i), s) for i, s in enumerate(spec.stages)]

    def add(artifact: str, role: str, target: Stage, tolerance: dict[str, float]) -> None:
        evaluation = _bookend(spec, artifact, role, target, tolerance)
        inputs = max(index.get(name, -1) for name in evaluation.consumes.values())
        placed.append((max(index[target.name] - 0.5, inputs + 0.5), evaluation))
        stages.append(evaluation)

    scored = {stage.name: scored_artifact(stage, spec.stages) for stage in spec.stages}
    conversions = {artifact for name, artifact in scored.items() if artifact not in (None, name)}
    for stage in spec.stages:
        if stage.name in conversions or not bookended(stage, spec.stages):
            continue  # a conversion that scores a Megatron stage's output is bookended as that stage
        if before_eval(spec, stages, stage) is None:
            start, path = starting_point(spec, stage), model_path(stage)
            if start is None and path:
                raise spec.error(
                    f"stage {stage.name} starts from {path!r}, which no checkpoint source "
                    f"declares, so its before-evaluation has nothing to score: declare it as a checkpoint_hf source, "
                    f"write that evaluation by hand (role: before, target: {stage.name}), or set `evaluate: false`"
                )
            if start is not None and scorable_port(spec.artifact_type(start)):
                add(start, "before", stage, {})
        if after_eval(spec, stages, stage.name) is None:
            add(scored[stage.name], "after", stage, _tolerance(spec, stage))
    return tuple(stage for _, stage in sorted(placed, key=lambda pair: pair[0]))


def _role(spec: PipelineSpec, evaluation: Stage) -> tuple[str, str | None]:
    params = spec.params(evaluation)
    return params["role"], params["target"]


def _also_before(spec: PipelineSpec, evaluation: Stage) -> str | None:
    return spec.params(evaluation)["also_before"]


def _scored(evaluation: Stage) -> set[str]:
    return {evaluation.consumes[port] for port in SCORABLE if port in evaluation.consumes}


def scored_artifact(stage: Stage, stages: Sequence[Stage] = ()) -> str | None:
    """The artifact that holds what a stage made in a form eval/model_eval scores: its own output, or the HF export
    of its Megatron checkpoint by a stage among `stages` (convert/megatron_to_hf); None when there is neither."""
    if scorable_port(CATALOG.step(stage.step).primary_output):
        return stage.name
    converts = (s for s in stages if s.consumes.get("checkpoint_megatron") == stage.name)
    return next((s.name for s in converts if scorable_port(CATALOG.step(s.step).primary_output)), None)


def bookended(stage: Stage, stages: Sequence[Stage] = ()) -> bool:
    """Whether the evaluation section bookends this stage: it changes model quality and what it made can be scored
    (scored_artifact, among `stages`)."""
    quality = stage.evaluate and CATALOG.step(stage.step).category in QUALITY_CATEGORIES
    return quality and scored_artifact(stage, stages) is not None


def _tolerance(spec: PipelineSpec, stage: Stage) -> dict[str, float]:
    tolerances = spec.evaluation.gate_tolerance
    value = tolerances.get(stage.name, tolerances.get(CATALOG.step(stage.step).category))
    return {} if value is None else {"gate_tolerance": value}


def _bookend(spec: PipelineSpec, artifact: str, role: str, target: Stage, tolerance: dict[str, float]) -> Stage:
    section = spec.evaluation
    name = section.names.get(artifact, f"eval_{artifact}")
    if spec.source(name) is not None or name in {s.name for s in spec.stages}:
        raise spec.error(
            f"the evaluation of {artifact} is named {name!r}, like an artifact of the pipeline: rename that "
            f"artifact, or name the evaluation with `evaluation: {{names: {{{artifact}: <name>}}}}`"
        )
    return Stage(
        name=name,
        step=EVAL,
        consumes={scorable_port(spec.artifact_type(artifact)): artifact} | section.data,
        preset=section.preset,
        config=section.config | {"role": role, "target": target.name} | tolerance,
        description=f"Evaluation of {artifact}, inserted by the pipeline's `evaluation:` section (its data and "
        "settings, shared by every bookend so the gates compare like with like).",
    )


def _check_section(spec: PipelineSpec) -> None:
    section = spec.evaluation
    artifacts = {s.name for s in spec.sources} | {s.name for s in spec.stages}
    presets = CATALOG.step(EVAL).presets
    if section.preset not in presets:
        raise spec.error(f"evaluation.preset {section.preset!r} is not a preset of {EVAL}: one of {sorted(presets)}")
    shared = sorted(set(section.config) & set(PER_BOOKEND))
    if shared:
        raise spec.error(
            f"evaluation.config sets {shared}: each bookend has its own role, target, tolerance and model to "
            "score (per-stage or per-category tolerances go in evaluation.gate_tolerance)"
        )
    checkpoints = sorted(set(section.data) & set(CHECKPOINTS))
    if checkpoints:
        raise spec.error(f"evaluation.data lists {checkpoints}: bookends score the stages' checkpoints; list eval data")
    for field, keys in (("data", section.data.values()), ("names", section.names)):
        unknown = sorted(set(keys) - artifacts)
        if unknown:
            raise spec.error(f"evaluation.{field} names {unknown}, which are no sources or stages of this pipeline")
    unknown = sorted(set(section.gate_tolerance) - artifacts - set(DEFAULT_TOLERANCE))
    if unknown:
        raise spec.error(
            f"evaluation.gate_tolerance keys {unknown} are neither stages nor quality-changing categories "
            f"({', '.join(DEFAULT_TOLERANCE)})"
        )
