"""sdg/data_designer: synthetic training rows with NeMo Data Designer, projected for SFT, tool-use SFT or DPO.

Declared columns (category samplers, llm_text, llm_structured, llm_judge; seed columns come from the seed file) go
into a DataDesignerConfigBuilder; a preview of a few rows is generated and projected first, so a column that does
not fit the projection fails before the full run. The output keeps, next to the JSONL, the Data Designer config,
the model, the provider (its key variable's name only) and the seed file's digest.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from nemotron_assets.digests import content_digest
from nemotron_assets.paths import STATE_DIR
from nemotron_assets.steps import StepResult, StepRun
from nemotron_assets.steps.data_designer.projections import PROJECTIONS, ProjectionMismatch

PREVIEW_RECORDS = 2
MODEL_ALIAS = "generator"
CONFIG_FILE = "sdg_config.json"
ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")


def providers(run: StepRun) -> list[Any]:
    """Data Designer ModelProviders from `providers`; each api_key must be the NAME of a variable."""
    import data_designer.config as dd

    declared = run.p.providers or {}
    if run.p.models.provider not in declared:
        raise run.error("unknown_model_provider", f"{run.p.models.provider!r} not in {sorted(declared)}")
    result = []
    for name, spec in declared.items():
        key = spec.get("api_key")
        if key is not None and not ENV_NAME.fullmatch(key):
            raise run.error("provider_secret_resolved_into_yaml", f"provider {name}: api_key is not a variable name")
        if key is not None and not os.environ.get(key):
            raise run.error("unknown_model_provider", f"provider {name}: variable {key} is not set")
        result.append(
            dd.ModelProvider(
                name=name,
                endpoint=spec["endpoint"],
                provider_type="openai",
                api_key=key,
                extra_headers=spec.get("extra_headers"),
                extra_body=spec.get("extra_body"),
            )
        )
    return result


COLUMN_TYPES = ("category", "llm_text", "llm_structured", "llm_judge")


def column(run: StepRun, name: str, spec: dict[str, Any]) -> Any:
    """One declared column as its Data Designer config (invalid_column: an unknown type, a missing key, or settings
    Data Designer's own models refuse)."""
    from pydantic import ValidationError

    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind not in COLUMN_TYPES:
        raise run.error("invalid_column", f"column {name}: type {kind!r}, not one of {COLUMN_TYPES}")
    try:
        return column_config(name, spec)
    except KeyError as e:
        raise run.error("invalid_column", f"column {name} ({kind}) has no {e.args[0]!r}") from None
    except ValidationError as e:
        raise run.error("invalid_column", f"column {name} ({kind}): {e}") from None


def column_config(name: str, spec: dict[str, Any]) -> Any:
    """A column of a known type as Data Designer's config model."""
    import data_designer.config as dd

    kind = spec["type"]
    if kind == "category":
        params = dd.CategorySamplerParams(values=spec["values"])
        return dd.SamplerColumnConfig(name=name, sampler_type=dd.SamplerType.CATEGORY, params=params)
    if kind == "llm_text":
        return dd.LLMTextColumnConfig(
            name=name, prompt=spec["prompt"], system_prompt=spec.get("system_prompt"), model_alias=MODEL_ALIAS
        )
    if kind == "llm_structured":
        return dd.LLMStructuredColumnConfig(
            name=name, prompt=spec["prompt"], output_format=spec["output_format"], model_alias=MODEL_ALIAS
        )
    scores = [dd.Score(name=k, description=v["description"], options=v["options"]) for k, v in spec["scores"].items()]
    return dd.LLMJudgeColumnConfig(name=name, prompt=spec["prompt"], scores=scores, model_alias=MODEL_ALIAS)


def seed_file(run: StepRun) -> Path | None:
    if "training_jsonl" in run.inputs:
        return run.input("training_jsonl").path
    path = run.p.seed_dataset.path
    return Path(path) if path else None


def builder(run: StepRun, seeds: Path | None) -> Any:
    import data_designer.config as dd

    inference = dd.ChatCompletionInferenceParams(max_tokens=1024, temperature=0.0)
    model = dd.ModelConfig(
        alias=MODEL_ALIAS,
        model=run.p.models.model,
        provider=run.p.models.provider,
        inference_parameters=inference,
    )
    config = dd.DataDesignerConfigBuilder(model_configs=[model])
    if seeds is not None:
        strategy = dd.SamplingStrategy[(run.p.seed_dataset.strategy or "ordered").upper()]
        config.with_seed_dataset(dd.LocalFileSeedSource(path=str(seeds)), sampling_strategy=strategy)
    for name, spec in (run.p.columns or {}).items():
        config.add_column(column(run, name, spec))
    return config


def project(run: StepRun, rows: list[dict[str, Any]], metadata: list[str]) -> list[dict[str, Any]]:
    kind = run.p.output_projection.type
    try:
        return [PROJECTIONS[kind](row, metadata) for row in rows]
    except ProjectionMismatch as e:
        raise run.error("projection_schema_mismatch", f"{kind}: {e}") from None


def use_state_home() -> None:
    """Data Designer keeps its home under the project's state directory, not ~/.data-designer (one per process)."""
    os.environ.setdefault("DATA_DESIGNER_HOME", str(STATE_DIR / "data_designer"))


def run(run: StepRun) -> StepResult:
    use_state_home()
    from data_designer.interface.data_designer import DataDesigner
    from data_designer.interface.errors import DataDesignerGenerationError

    model_providers = providers(run)
    seeds = seed_file(run)
    config = builder(run, seeds)
    scratch = run.output_dir / ".data_designer"  # Data Designer's own artifacts; staging is dropped on failure
    designer = DataDesigner(scratch, model_providers=model_providers)
    declared = run.p.columns or {}
    metadata = [name for name, spec in declared.items() if spec["type"] in ("category", "llm_judge")]
    wanted = run.p.num_records
    try:
        preview = designer.preview(config, num_records=min(PREVIEW_RECORDS, wanted)).dataset
        metadata += [c for c in preview.columns if c not in declared]  # seed columns
        records = project(run, preview.to_dict("records"), metadata)
        if not run.p.preview and wanted > len(records):
            name = run.p.dataset_name or "sdg"
            created = designer.create(config, num_records=wanted, dataset_name=name).load_dataset()
            records = project(run, created.to_dict("records"), metadata)
    except DataDesignerGenerationError as e:
        raise run.error("generation_failed", str(e)[:1000]) from None
    shutil.rmtree(scratch, ignore_errors=True)
    kind = run.p.output_projection.type
    with (run.output_dir / f"{kind}.jsonl").open("w") as f:
        f.writelines(json.dumps(record, default=str) + "\n" for record in records)
    provenance = {
        "data_designer_config": config.get_builder_config().model_dump(mode="json"),
        "model": run.p.models.model,
        "provider": run.p.providers[run.p.models.provider],  # the key variable's name only
        "seeds": {"path": str(seeds), "digest": content_digest(seeds)} if seeds else None,
        "projection": kind,
    }
    (run.output_dir / CONFIG_FILE).write_text(json.dumps(provenance, indent=1, default=str))
    stats = {"records": len(records), "preview_only": run.p.preview, "projection": kind}
    return StepResult(stats, {"sdg": {k: provenance[k] for k in ("model", "seeds", "projection")}})
