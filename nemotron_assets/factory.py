"""Pipeline specs -> Dagster assets keyed `<pipeline>/<artifact>`, with Launchpad config and blocking contract checks.

Descriptions, kinds and config come from the catalog, so the UI, the CLI and the steps share one source.
Nothing heavy is imported here: a stage's step module is imported only when it runs. Annotations stay
evaluated (no `from __future__ import annotations`): Dagster reads each asset's generated config class from them.
"""

import base64
from pathlib import Path
from typing import Any, Literal, Optional

import dagster as dg
from pydantic import Field

from nemotron_assets.artifacts import has_contract
from nemotron_assets.automation import automation_condition, freshness_policy, partitions_def, pipeline_automation
from nemotron_assets.catalog import CATALOG, Parameter, StepSpec
from nemotron_assets.catalog.models import PYTHON_ANNOTATIONS, nested_model
from nemotron_assets.errors import NamedError
from nemotron_assets.guardrails import check_hardware, gpu_pool, gpus_for
from nemotron_assets.paths import expand
from nemotron_assets.pipelines import PipelineSpec, Source, Stage
from nemotron_assets.pipelines.bookends import scored_artifact
from nemotron_assets.steps.launch import InfrastructureFailure, LaunchFailed, Measured
from nemotron_assets.usage import metered
from nemotron_assets.versions import step_code_version
from resources.artifact_store import ArtifactStore
from resources.profile import HardwareProfile

# Only jobs lost to the infrastructure (node failure, preemption, eviction) are retried, and a retried training run
# resumes from its last checkpoint; a failed step or a named error would fail the same way again.
INFRASTRUCTURE_RETRIES, RETRY_WAIT_SECONDS = 2, 15


def _annotation(param: Parameter, default: Any) -> Any:
    # Dagster makes an enum of a Literal of 2+ strings with a default; other choices are checked when the stage runs.
    enum = param.type == "str" and param.choices and len(param.choices) > 1 and default is not None
    annotation = Literal[param.choices] if enum else PYTHON_ANNOTATIONS[param.type]
    return Optional[annotation] if default is None else annotation  # noqa: UP045 (pydantic needs the runtime form)


def config_class(name: str, step: StepSpec, defaults: dict[str, Any]) -> type[dg.Config]:
    """A dg.Config for a step's parameters with the stage's defaults; dotted names become nested configs."""

    def field(param: Parameter) -> tuple[Any, Any]:
        default = defaults[param.name]
        return _annotation(param, default), Field(default, description=param.description)

    return nested_model(name, step.parameters, dg.Config, field)


def flat_params(step: StepSpec, config: dg.Config) -> dict[str, Any]:
    """Config values back under the catalog's dotted parameter names."""
    dumped = config.model_dump()
    params = {}
    for param in step.parameters:
        value: Any = dumped
        for part in param.name.split("."):
            value = value[part]
        params[param.name] = value
    return params


def _metadata(values: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v if isinstance(v, (bool, int, float, str)) else dg.MetadataValue.json(v)
        for k, v in values.items()
        if v is not None
    }


def tracking_metadata(record: dict[str, Any] | None) -> dict[str, dg.MetadataValue]:
    """The tracker run a materialization logged to: its id, and a link to it (an offline W&B run: its directory; an
    MLflow store that is no web server: its tracking URI)."""
    if record is None:
        return {}
    if "url" in record:
        link = dg.MetadataValue.url(record["url"])
    elif "directory" in record:
        link = dg.MetadataValue.path(record["directory"])
    else:
        link = dg.MetadataValue.text(record["tracking_uri"])
    return {"tracking/run_id": dg.MetadataValue.text(record["run_id"]), "tracking/run": link}


def plots_metadata(artifact: Path, plots: dict[str, str]) -> dict[str, dg.MetadataValue]:
    """PNG plots inside an artifact, inlined as markdown images."""
    return {
        title.replace(" ", "_"): dg.MetadataValue.md(
            f"![{title}](data:image/png;base64,{base64.b64encode((artifact / file).read_bytes()).decode()})"
        )
        for title, file in plots.items()
    }


class ContractCheckConfig(dg.Config):
    full_verify: bool = Field(
        False,
        description="Re-read every byte of the published artifact against its recorded digests instead of taking an "
        "unchanged file's digest (same size, mtime, ctime, inode) from the digest cache.",
    )


def _contract_result(path_text: str, type_name: str, verify_digests: bool, full: bool = False) -> dg.AssetCheckResult:
    from nemotron_assets.artifacts import validate
    from resources.artifact_store import verify

    try:
        stats = validate(Path(path_text), type_name)
        if verify_digests:
            verify(Path(path_text), full)
    except NamedError as e:
        return dg.AssetCheckResult(
            passed=False, description=str(e), metadata=_metadata(e.to_json() | {"path": path_text})
        )
    return dg.AssetCheckResult(passed=True, metadata=_metadata(stats | {"path": path_text}))


def contract_check(
    key: dg.AssetKey, type_name: str, source: Source | None, partitioned: bool = False
) -> dg.AssetChecksDefinition:
    """Blocking check: the artifact (the run's partition of it) satisfies its type's contract (and, once
    published, its recorded digests)."""

    @dg.asset_check(
        asset=key,
        name="contract",
        blocking=True,
        description=f"The {type_name} contract: {CATALOG.types[type_name].description}",
    )
    def _check(
        context: dg.AssetCheckExecutionContext, config: ContractCheckConfig, artifact_store: ArtifactStore
    ) -> dg.AssetCheckResult:
        if source is not None:
            return _contract_result(expand(source.path), type_name, verify_digests=False)
        partition = [context.op_execution_context.partition_key] if partitioned else []
        current = artifact_store.current(key.path + partition)
        if current is None:
            return dg.AssetCheckResult(passed=False, description=f"{key.to_user_string()} has no published artifact")
        return _contract_result(str(current[1]), type_name, verify_digests=True, full=config.full_verify)

    return _check


def gate_check(pipeline: PipelineSpec, target: Stage, before: Stage, after: Stage) -> dg.AssetChecksDefinition:
    """Blocking check on the after-evaluation: the target's before/after scores compared (nemotron_assets.gates).

    Consumers of the target's checkpoint also depend on that evaluation (`gating_deps`), so a failing gate
    blocks them; a check on the checkpoint itself would wait on its own downstream evaluation.
    """
    from nemotron_assets.gates import DEFAULT_TOLERANCE

    category = CATALOG.step(target.step).category
    configured = pipeline.params(after).get("gate_tolerance")
    tolerance = DEFAULT_TOLERANCE[category] if configured is None else configured
    keys = [dg.AssetKey([pipeline.name, s.name]) for s in (before, after)]
    target_key = (pipeline.name, target.name)

    @dg.asset_check(
        asset=keys[1],
        name="quality_gate",
        blocking=True,
        additional_deps=keys[:1],
        description=f"{target.name}: {before.name} vs {after.name}, {category} gate, tolerance {tolerance}.",
    )
    def _gate(artifact_store: ArtifactStore) -> dg.AssetCheckResult:
        from nemotron_assets.gates import compare, comparison_table, scored_version, settle
        from nemotron_assets.model_card import card_type, write_verdict

        sides = [artifact_store.current(key.path) for key in keys]
        if None in sides:
            return dg.AssetCheckResult(passed=False, description="an evaluation is missing: materialize both evals")
        passed, rows, reason = compare(sides[0][1], sides[1][1], category, tolerance)
        current = settle(artifact_store, target_key, sides[0][1], sides[1][1], passed, tolerance)
        if card_type(CATALOG.step(target.step).primary_output):
            verdict = {
                "before": before.name,
                "after": after.name,
                "tolerance": tolerance,
                "passed": passed,
                "reason": reason,
            }
            scored = artifact_store.version_dir(target_key, scored_version(sides[1][1], target.name))
            write_verdict(scored, verdict, rows)
        table = dg.MetadataValue.md(comparison_table(rows))
        metadata = {"tolerance": tolerance, "comparison": table, "current": current or "none"}
        return dg.AssetCheckResult(passed=passed, description=reason, metadata=metadata)

    return _gate


def source_spec(pipeline: PipelineSpec, source: Source) -> dg.AssetSpec:
    artifact = CATALOG.types[source.type]
    return dg.AssetSpec(
        key=[pipeline.name, source.name],
        description=source.description or artifact.description,
        group_name=pipeline.name,
        kinds={artifact.kind},
        metadata={"artifact_type": source.type, "path": source.path},
        partitions_def=partitions_def(pipeline, source.name),
    )


def gating_deps(pipeline: PipelineSpec) -> dict[str, list[dg.AssetKey]]:
    """stage -> the after-evaluations gating the checkpoints it consumes: the gated stage's, and the HF export the
    evaluation scores when that stage made a Megatron checkpoint (the export itself is what is scored, not gated)."""
    deps: dict[str, list[dg.AssetKey]] = {}
    for target, _, after in pipeline.bookends():
        scored = scored_artifact(target, pipeline.stages)  # the target, or its HF export
        for stage in pipeline.stages:
            if stage.name not in (after.name, scored) and {target.name, scored} & set(stage.consumes.values()):
                deps.setdefault(stage.name, []).append(dg.AssetKey([pipeline.name, after.name]))
    return deps


def stage_asset(pipeline: PipelineSpec, stage: Stage, gates: list[dg.AssetKey]) -> dg.AssetsDefinition:
    step = CATALOG.step(stage.step)
    artifact = CATALOG.types[step.primary_output]
    Config = config_class(f"{pipeline.name}__{stage.name}__config", step, pipeline.params(stage))

    @dg.asset(
        key=[pipeline.name, stage.name],
        deps=[dg.AssetKey([pipeline.name, name]) for name in stage.consumes.values()] + gates,
        group_name=pipeline.name,
        kinds={artifact.kind, step.kind},
        description=f"{stage.description or step.description}\n\n"
        f"Step `{step.id}` (preset `{stage.preset}`) -> {artifact.name}.",
        code_version=step_code_version(step.id),
        metadata={"step": step.id, "artifact_type": artifact.name, "preset": stage.preset},
        tags={"nemotron/category": step.category, "nemotron/runnable": str(step.entry is not None).lower()},
        pool=gpu_pool(step),
        partitions_def=partitions_def(pipeline, stage.name),
        automation_condition=automation_condition(pipeline, stage),
        freshness_policy=freshness_policy(pipeline, stage),
    )
    def _asset(
        context: dg.AssetExecutionContext, config: Config, artifact_store: ArtifactStore, hardware: HardwareProfile
    ) -> dg.MaterializeResult:
        from nemotron_assets.execution import run_stage
        from nemotron_assets.launchers import job_paths, launcher_for

        profile = hardware.load()
        params = flat_params(step, config)
        launched: list[Measured] = []  # a step that launches nothing ran in-process
        gpus = gpus_for(step, profile)
        try:
            check_hardware(step, params, profile)  # before anything is submitted
            paths = job_paths(profile, artifact_store.base)
            result = run_stage(
                pipeline,
                stage,
                params,
                artifact_store,
                profile.name,
                run_id=context.run.run_id,
                log=context.log,
                launcher=metered(launcher_for(context, profile, gpus), launched),
                gpus=gpus,
                partition=context.partition_key if stage.partitioned else None,
                cpus=profile.cpus,
                paths=paths,
                nodes=profile.nodes,
                executor=profile.executor,
                gpu_hour_price=profile.gpu_hour_price,
                ray_address=profile.ray_address,
                tracker=pipeline.tracking or profile.tracking,
            )
        except NamedError as e:
            raise dg.Failure(description=str(e), metadata=_metadata(e.to_json()), allow_retries=False) from e
        except InfrastructureFailure as e:
            context.log.warning(f"lost to the infrastructure, retrying: {e}")
            raise dg.RetryRequested(max_retries=INFRASTRUCTURE_RETRIES, seconds_to_wait=RETRY_WAIT_SECONDS) from e
        except LaunchFailed as e:
            raise dg.Failure(description=str(e), allow_retries=False) from e
        return dg.MaterializeResult(
            metadata=_metadata(result.stats)
            | {
                "path": dg.MetadataValue.path(str(result.path)),
                "dagster/uri": dg.MetadataValue.path(str(result.path)),
                "data_version": result.version,
                "reused": result.reused,
                "profile": profile.name,
                "launcher": profile.executor if launched else "in_process",
                "step_seconds": result.provenance["timings"]["step_seconds"],
            }
            | _metadata({f"usage/{k}": v for k, v in result.provenance.get("usage", {}).items()})
            | plots_metadata(result.path, result.provenance.get("plots", {}))
            | tracking_metadata(result.provenance.get("tracking")),
            data_version=dg.DataVersion(result.version),
        )

    return _asset


def pipeline_assets(pipeline: PipelineSpec) -> list[Any]:
    """A pipeline's source specs, stage assets and contract checks."""
    defs: list[Any] = []
    for source in pipeline.sources:
        spec = source_spec(pipeline, source)
        defs.append(spec)
        if has_contract(source.type) and not source.partitioned:  # a drop is type-checked by its consumer
            defs.append(contract_check(spec.key, source.type, source))
    gates = gating_deps(pipeline)
    for stage in pipeline.stages:
        asset = stage_asset(pipeline, stage, gates.get(stage.name, []))
        defs.append(asset)
        output = CATALOG.step(stage.step).primary_output
        if has_contract(output):
            defs.append(contract_check(asset.key, output, None, stage.partitioned))
    defs += [gate_check(pipeline, *bookend) for bookend in pipeline.bookends()]
    return defs


def pipeline_definitions(pipeline: PipelineSpec) -> dg.Definitions:
    """A pipeline's assets, checks and automation (the resources they use come from `RESOURCES`)."""
    defs = pipeline_assets(pipeline)
    assets = dg.Definitions(
        assets=[d for d in defs if not isinstance(d, dg.AssetChecksDefinition)],
        asset_checks=[d for d in defs if isinstance(d, dg.AssetChecksDefinition)],
    )
    return dg.Definitions.merge(assets, pipeline_automation(pipeline))


RESOURCES = dg.Definitions(resources={"artifact_store": ArtifactStore(), "hardware": HardwareProfile()})


def build_definitions(pipelines: list[PipelineSpec], *more: dg.Definitions) -> dg.Definitions:
    """The pipelines' definitions, `more` (e.g. the defs folder's components) and the resources they share."""
    return dg.Definitions.merge(*(pipeline_definitions(p) for p in pipelines), *more, RESOURCES)
