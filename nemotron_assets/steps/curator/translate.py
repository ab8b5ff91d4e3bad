"""translate/nemo_curator: JSONL records -> translated JSONL with NeMo Curator's TranslationStage.

JsonlReader -> TranslationStage (segmentation, LLM or NMT/cloud backend, optional FAITH judge and threshold filter,
reassembly, output formatting with translated_messages for chat) -> JsonlWriter, on Ray Data. The endpoint is
checked before Ray starts so a wrong URL or key is a named error, not a worker crash; the API key is read from
the variable `server.api_key_env` names and never written anywhere.
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path
from typing import Any

from nemotron_assets.artifacts.files import data_files
from nemotron_assets.artifacts.jsonl import iter_lines, parse_line
from nemotron_assets.steps import StepResult, StepRun
from nemotron_assets.steps.curator.runtime import check_file_memory, finish_shards, run_pipeline

JSON_COLUMNS = ["translated_messages", "translation_metadata", "faith_segment_scores"]
WALL_CLOCK_COLUMNS = ["translation_time"]  # seconds per row: would make two runs of one version differ
CLOUD_VARIABLES = {
    "google": ("GOOGLE_APPLICATION_CREDENTIALS",),
    "aws": ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE"),
}


def api_key(run: StepRun) -> str:
    """The key from the variable server.api_key_env names; a keyless local server gets a placeholder."""
    variable = run.p.server.get("api_key_env")
    if not variable:
        return "unused"
    if not os.environ.get(variable):
        raise run.error("missing_llm_endpoint", f"server.api_key_env names {variable}, which is not set")
    return os.environ[variable]


def check_llm(run: StepRun, key: str) -> None:
    """One chat request to server.url/server.model, so a bad endpoint fails here with its reason."""
    import openai

    server = run.p.server
    if not server.get("url") or not server.get("model"):
        raise run.error(
            "missing_llm_endpoint", f"server.url = {server.get('url')!r}, server.model = {server.get('model')!r}"
        )
    client = openai.OpenAI(base_url=server["url"], api_key=key, max_retries=0, timeout=30)
    try:
        client.chat.completions.create(model=server["model"], messages=[{"role": "user", "content": "Hello"}])
    except openai.OpenAIError as e:
        raise run.error("missing_llm_endpoint", f"{server['url']} model {server['model']}: {e}") from None


def check_nmt(run: StepRun) -> None:
    url = run.p.nmt["server_url"].rstrip("/")
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
            response.read()
    except OSError as e:
        raise run.error("missing_nmt_server", f"GET {url}/health: {e}") from None


def check_cloud(run: StepRun, backend: str) -> None:
    if not any(os.environ.get(v) for v in CLOUD_VARIABLES[backend]):
        raise run.error("missing_cloud_credentials", f"none of {', '.join(CLOUD_VARIABLES[backend])} is set")


def check_field_path(run: StepRun, files: list[Path]) -> int:
    """Every record has text at text_field (a dotted path; `*` walks a list); returns the record count."""
    path = run.p.text_field.split(".")
    records = 0
    for where, line in iter_lines(files):
        values = [parse_line(where, line)]
        for key in path:
            values = [v for value in values for v in (value if key == "*" and isinstance(value, list) else [value])]
            if key != "*":
                values = [value.get(key) if isinstance(value, dict) else None for value in values]
        if not values or not all(isinstance(v, str) for v in values):
            raise run.error("field_path_mismatch", f"{where}: no text at {run.p.text_field!r}")
        records += 1
    return records


def translation_stage(run: StepRun) -> Any:
    """Curator's TranslationStage configured from the step parameters (endpoints already checked)."""
    from nemo_curator.models.client.llm_client import GenerationConfig
    from nemo_curator.models.client.openai_client import AsyncOpenAIClient
    from nemo_curator.stages.text.experimental.translation import TranslationStage

    backend, faith = run.p.backend, run.p.faith_eval.enabled
    client = None
    if backend == "llm" or faith:
        key = api_key(run)
        check_llm(run, key)
        client = AsyncOpenAIClient(base_url=run.p.server["url"], api_key=key, max_concurrent_requests=8)
    if backend == "nmt":
        check_nmt(run)
    elif backend in CLOUD_VARIABLES:
        check_cloud(run, backend)
    backend_config = {"nmt": run.p.nmt, "google": run.p.google, "aws": run.p.aws}.get(backend, {})
    return TranslationStage(
        source_lang=run.p.source_language,
        target_lang=run.p.target_language,
        text_field=run.p.text_field,
        segmentation_mode=run.p.segmentation_mode,
        client=client,
        model_name=run.p.server.get("model") or "",
        generation_config=GenerationConfig(max_tokens=2048, temperature=0.0),
        health_check=False,
        dry_run=run.p.dry_run,
        backend_type=backend,
        backend_config=backend_config,
        enable_faith_eval=faith,
        faith_threshold=run.p.faith_eval.threshold,
        faith_generation_config=GenerationConfig(max_tokens=2048, temperature=0.0),
        output_mode=run.p.output_mode,
        reconstruct_messages=run.p.reconstruct_messages and run.p.text_field.startswith("messages."),
    )


def plain(value: Any) -> Any:
    """Arrow hands nested JSON over as numpy arrays; Curator's field paths walk lists and dicts."""
    import numpy as np

    if isinstance(value, np.ndarray | list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def decoded(value: Any) -> Any:
    """Curator writes rebuilt chat messages and metadata as JSON strings; the records carry them as JSON."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def column_stage(name: str, columns: list[str], convert: Any, drop: list[str] | None = None) -> Any:
    """A Curator ProcessingStage applying `convert` to every cell of the `columns` a batch has, and dropping the
    `drop` columns."""
    from nemo_curator.stages.base import ProcessingStage
    from nemo_curator.tasks import DocumentBatch

    class ColumnStage(ProcessingStage[DocumentBatch, DocumentBatch]):
        def process(self, batch: DocumentBatch) -> DocumentBatch:
            df = batch.to_pandas().copy()
            for column in columns:
                if column in df.columns:
                    df[column] = df[column].map(convert)
            df = df.drop(columns=[column for column in drop or () if column in df.columns])
            return DocumentBatch(
                dataset_name=batch.dataset_name, data=df, _metadata=batch._metadata, _stage_perf=batch._stage_perf
            )

    stage = ColumnStage()
    stage.name = name
    return stage


def output_stats(run: StepRun) -> dict[str, Any]:
    """translation_failed when a row came back with a translation error; the mean FAITH score when FAITH ran."""
    records = [json.loads(line) for f in sorted(run.output_dir.glob("*.jsonl")) for line in f.open() if line.strip()]
    failed = [r["translation_errors"] for r in records if r.get("translation_errors")]
    if failed:
        raise run.error("translation_failed", f"{len(failed)} of {len(records)} rows, e.g. {failed[0][:300]}")
    scores = [r["faith_avg"] for r in records if isinstance(r.get("faith_avg"), int | float)]
    return {"faith_mean": round(sum(scores) / len(scores), 3)} if scores else {}


def run(run: StepRun) -> StepResult:
    from nemo_curator.stages.text.io.reader import JsonlReader
    from nemo_curator.stages.text.io.writer import JsonlWriter

    if not run.p.source_language or not run.p.target_language:
        raise run.error(
            "missing_language_codes",
            f"source_language = {run.p.source_language!r}, target_language = {run.p.target_language!r}",
        )
    files = data_files(run.input("filtered_jsonl").path, (".jsonl",))
    check_file_memory(run, files, "single_huge_file_memory_pressure")
    records = check_field_path(run, files)
    root = run.p.text_field.split(".")[0]
    writer = JsonlWriter(path=str(run.output_dir), mode="ignore")
    stages = [
        JsonlReader(file_paths=[str(f) for f in files]),
        column_stage("nested_as_lists", [root], plain),
        translation_stage(run),
        column_stage("json_columns", [root, *JSON_COLUMNS], decoded, drop=WALL_CLOCK_COLUMNS),
        writer,
    ]
    rows, executor = run_pipeline(run, "nemotron_translate", stages, files, executor=run.p.executor)
    finish_shards(run.output_dir)
    kept = rows.get(writer.name, 0)
    stats = {"input_records": records, "output_records": kept, "faith_dropped": records - kept, "executor": executor}
    return StepResult(
        stats | output_stats(run),
        {
            "translation": {
                "source": run.p.source_language,
                "target": run.p.target_language,
                "backend": run.p.backend,
            }
        },
    )
