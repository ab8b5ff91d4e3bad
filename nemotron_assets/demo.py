"""The demo's closing summary: what the tiny pipeline materialized, read back from the Dagster instance."""

from __future__ import annotations

import os

from nemotron_assets.pipelines import load_pipelines
from resources.artifact_store import ArtifactStore

HEADLINE = (  # (metadata keys, format): shown when every key is present
    (("rows",), "{:,} rows"),
    (("input_records", "kept_records"), "kept {1:,} of {0:,} records"),
    (("output_records", "faith_mean"), "{:,} records translated, FAITH mean {:.2f}"),
    (("records", "projection"), "{:,} synthetic records ({})"),
    (("documents",), "{:,} documents"),
    (("bins",), "{:,} bins"),
    (("tokens",), "{:,} tokens"),
    (("packing_efficiency",), "packing efficiency {:.1f}%"),
    (("train_rows",), "train {:,}"),
    (("val_rows",), "val {:,}"),
    (("train_records", "held_out_records"), "train {:,}, held out {:,} records"),
    (("steps",), "{} steps"),
    (("first_loss", "final_loss"), "loss {:.3f} -> {:.3f}"),
    (("nemotron_mcq/acc",), "MCQ accuracy {:.3f}"),
    (("nemotron_chat_loss/nll_per_byte",), "held-out chat NLL/byte {:.3f}"),
    (("max_logit_difference", "relative_logit_difference"), "max logit difference {:.1e} ({:.0e} of the largest)"),
)
CHECKS = ("contract", "quality_gate")
USAGE = {"wall_seconds": "s wall time", "gpu_hours": "GPU-hours", "tokens": "tokens", "cost": "cost"}


def summary(pipeline_name: str) -> str:
    import dagster as dg

    pipeline = next(p for p in load_pipelines() if p.name == pipeline_name)
    instance = dg.DagsterInstance.get()
    lines = [f"Pipeline `{pipeline.name}` ({len(pipeline.stages)} assets):"]
    spent: dict[str, float] = {}  # usage/* summed over the latest materializations that did the work
    peaks: list[float] = []  # their peak GPU memory, where a job reported it (CUDA only)
    built = unrecorded = 0  # those materializations, and those without GPU-hours (a scheduler kept no record)
    for stage in pipeline.stages:
        key = dg.AssetKey([pipeline.name, stage.name])
        event = instance.get_latest_materialization_event(key)
        if event is None or event.asset_materialization is None:
            lines.append(f"  {key.to_user_string():26} not materialized")
            continue
        metadata = {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()}
        facts = [fmt.format(*(metadata[k] for k in keys)) for keys, fmt in HEADLINE if set(keys) <= metadata.keys()]
        checks = {
            name: record.status.value.lower()
            for name in CHECKS
            if (record := instance.get_latest_asset_check_evaluation_record(dg.AssetCheckKey(key, name)))
        }
        statuses = ", ".join(f"{name.replace('_', ' ')} {status}" for name, status in checks.items())
        reused = " (reused: inputs unchanged)" if metadata.get("reused") else ""
        if not reused:
            built += 1
            unrecorded += "usage/gpu_hours" not in metadata
            peaks += [metadata["usage/peak_gpu_memory_gb"]] if "usage/peak_gpu_memory_gb" in metadata else []
            for name in USAGE:
                spent[name] = spent.get(name, 0) + metadata.get(f"usage/{name}", 0)
        lines.append(f"  {key.to_user_string():26} {', '.join(facts)}; {statuses}{reused}")
        lines.append(f"  {'':26} {metadata['path']}")
    peak = f", peak GPU memory {max(peaks)} GiB" if peaks else ""
    unknown = f" (GPU-hours not recorded for {unrecorded} of them)" if unrecorded else ""
    lines += [
        "Usage: " + ", ".join(f"{round(spent.get(name, 0), 4):,} {label}" for name, label in USAGE.items()) + peak,
        f"       over {built} materializations that did the work{unknown}",
        f"Artifacts: {ArtifactStore().base}",
        f"Open the UI: make ui   (= DAGSTER_HOME={os.environ.get('DAGSTER_HOME', '')} "
        ".venv/bin/dagster dev -w workspace.yaml)",
        "            then http://127.0.0.1:3000 -> Assets -> group `tiny` for the lineage.",
    ]
    return "\n".join(lines)
