"""Automation of a pipeline with an `automation:` section: schedules, sensors, conditions, freshness.

Cost-aware, as docs/decisions.md says: GPU stages run only on the pipeline's explicit schedule (with a maximum
runtime and retry tags on the run); cheap data stages refresh declaratively when their inputs change; a sensor turns
each new data drop in a partitioned source's watched directory into a partition and requests its tokenization; the
checkpoint a quality gate promotes carries a freshness policy, so a refresh that stopped happening shows in the UI.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import dagster as dg

from nemotron_assets.catalog import CATALOG
from nemotron_assets.guardrails import gpu_pool
from nemotron_assets.paths import expand
from nemotron_assets.pipelines import PipelineSpec, Source, Stage

SENSOR_INTERVAL_SECONDS = 60


def partitions_def(pipeline: PipelineSpec, name: str) -> dg.DynamicPartitionsDefinition | None:
    """The partitions of an artifact: one per data drop of the partitioned source it derives from."""
    source = pipeline.partitions_of(name)
    return None if source is None else dg.DynamicPartitionsDefinition(name=f"{pipeline.name}__{source}")


def uses_gpus(stage: Stage) -> bool:
    return gpu_pool(CATALOG.step(stage.step)) is not None


def automation_condition(pipeline: PipelineSpec, stage: Stage) -> dg.AutomationCondition | None:
    """Cheap unpartitioned stages refresh once every input is up to date and has passed its blocking checks
    (a new drop's partition must be tokenized and valid first); GPU stages wait for the schedule, and per-drop
    stages for the sensor's run."""
    if pipeline.automation is None or stage.partitioned or uses_gpus(stage):
        return None
    return dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()


def freshness_policy(pipeline: PipelineSpec, stage: Stage) -> dg.FreshnessPolicy | None:
    """On a gated checkpoint of an automated pipeline: it must have been refreshed within freshness_hours."""
    if pipeline.automation is None or stage.name not in {target.name for target, _, _ in pipeline.bookends()}:
        return None
    return dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=pipeline.automation.freshness_hours))


def run_tags(pipeline: PipelineSpec) -> dict[str, str]:
    """Tags of a scheduled (GPU) run: a maximum runtime, and retries of the run for infrastructure failures only
    (a failed step fails the same way again; the assets themselves retry lost nodes)."""
    automation = pipeline.automation
    return {
        "dagster/max_runtime": str(int(automation.max_runtime_hours * 3600)),
        "dagster/max_retries": str(automation.max_retries),
        "dagster/retry_on_asset_or_op_failure": "false",
    }


def refresh_schedule(pipeline: PipelineSpec) -> dg.ScheduleDefinition:
    """The pipeline's GPU stages (training and its evaluations) on the section's cron."""
    keys = [dg.AssetKey([pipeline.name, stage.name]) for stage in pipeline.stages if uses_gpus(stage)]
    return dg.ScheduleDefinition(
        name=f"{pipeline.name}_refresh",
        cron_schedule=expand(pipeline.automation.cron),
        execution_timezone=pipeline.automation.timezone,
        target=dg.AssetSelection.assets(*keys),
        tags=run_tags(pipeline),
        description=f"Refresh {pipeline.name}'s GPU stages; cheap data stages refresh on their own when inputs change.",
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )


def drops(directory: Path) -> list[str]:
    """The data drops in a watched directory: its entries, except hidden ones (a drop being written: move it in)."""
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith(".")) if directory.is_dir() else []


def drop_sensor(pipeline: PipelineSpec, source: Source) -> dg.SensorDefinition:
    """New entries in a partitioned source's directory: add them as partitions and run the per-drop stages."""
    partitions = partitions_def(pipeline, source.name)
    stages = [s for s in pipeline.stages if s.partitioned and pipeline.partitions_of(s.name) == source.name]
    keys = [dg.AssetKey([pipeline.name, stage.name]) for stage in stages]

    @dg.sensor(
        name=f"{pipeline.name}_{source.name}_drops",
        target=dg.AssetSelection.assets(*keys),
        minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Each new file or directory in {source.path} is a partition of {pipeline.name}/{source.name}.",
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        directory = Path(expand(source.path))
        known = set(context.instance.get_dynamic_partitions(partitions.name))
        new = [k for k in drops(directory) if k not in known]
        if not new:
            return dg.SkipReason(f"no new drop in {directory}")
        return dg.SensorResult(
            run_requests=[dg.RunRequest(run_key=key, partition_key=key) for key in new],
            dynamic_partitions_requests=[partitions.build_add_request(new)],
        )

    return _sensor


def pipeline_automation(pipeline: PipelineSpec) -> dg.Definitions:
    """The schedule, drop sensors and automation-condition sensor of a pipeline with an `automation:` section."""
    if pipeline.automation is None:
        return dg.Definitions()
    conditions = dg.AutomationConditionSensorDefinition(
        name=f"{pipeline.name}_automation",
        target=dg.AssetSelection.groups(pipeline.name),
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    return dg.Definitions(
        schedules=[refresh_schedule(pipeline)],
        sensors=[drop_sensor(pipeline, s) for s in pipeline.sources if s.partitioned] + [conditions],
    )
