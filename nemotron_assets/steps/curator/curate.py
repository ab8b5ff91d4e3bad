"""curate/nemo_curator: raw JSONL -> filtered JSONL through a NeMo Curator pipeline.

JsonlReader -> [fastText language id + language filter] -> [word-count filter] -> [multilingual domain classifier]
-> JsonlWriter, on Ray Data or in process (runtime.choose_executor). Records are read whole, so every field (chat
`messages` included) survives; the language filter adds its `language` score column. Kept/dropped counts per
filter come from the stages' own row counts.
"""

from __future__ import annotations

import ast
from functools import partial
from pathlib import Path
from typing import Any

from nemotron_assets.artifacts.jsonl import check_text, iter_lines, parse_line
from nemotron_assets.steps import StepResult, StepRun
from nemotron_assets.steps.curator.runtime import (
    check_file_memory,
    execution_stages,
    finish_shards,
    run_pipeline,
)

DOMAIN_MODEL = "nvidia/multilingual-domain-classifier"


def input_files(run: StepRun) -> list[str]:
    """The consumed raw JSONL: the file itself, or the files under the directory matching input_glob."""
    root = run.input("raw_jsonl").path
    files = [root] if root.is_file() else sorted(p for p in root.glob(run.p.input_glob) if p.is_file())
    if not files:
        raise run.error("input_glob_no_matches", f"{run.p.input_glob!r} under {root} matched no file")
    return [str(p) for p in files]


def check_text_field(run: StepRun, files: list[str]) -> None:
    """Every record has a non-empty string at text_field (missing_text_field), before Ray starts."""
    for where, line in iter_lines(Path(f) for f in files):
        check_text(parse_line(where, line), where, run.p.text_field)


def keep_language(codes: frozenset[str], score: str) -> bool:
    """FastTextLangId scores are the string "[score, 'CODE']"; keep the listed codes (case-insensitive)."""
    return str(ast.literal_eval(score)[1]).casefold() in codes


def language_stages(run: StepRun, filters: dict[str, Any]) -> list[Any]:
    from nemo_curator.stages.text.filters import Filter, ScoreFilter
    from nemo_curator.stages.text.filters.fasttext import FastTextLangId

    model = (run.p.models or {}).get("fasttext_langid")
    if not model or not Path(model).is_file():
        raise run.error("missing_language_model", f"models.fasttext_langid = {model!r} is not a file")
    codes = frozenset(code.casefold() for code in run.p.language_codes)
    langid = FastTextLangId(model_path=model, min_langid_score=filters.get("min_langid_score", 0.3))
    return [
        ScoreFilter(langid, text_field=run.p.text_field, score_field="language", name="language_score"),
        Filter(partial(keep_language, codes), filter_field="language", name="language_codes"),
    ]


def word_stage(run: StepRun, filters: dict[str, Any]) -> Any:
    from nemo_curator.stages.text.filters import ScoreFilter
    from nemo_curator.stages.text.filters.heuristic import WordCountFilter

    word_filter = WordCountFilter(min_words=filters["min_words"], max_words=filters["max_words"])
    return ScoreFilter(word_filter, text_field=run.p.text_field, name="word_count")


def domain_stage(run: StepRun) -> Any:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    from nemo_curator.stages.text.classifiers import MultilingualDomainClassifier

    cache_dir = (run.p.models or {}).get("hf_cache_dir")
    try:
        snapshot_download(DOMAIN_MODEL, cache_dir=cache_dir, local_files_only=True)
    except LocalEntryNotFoundError:
        raise run.error("missing_domain_model", f"{DOMAIN_MODEL} is not in hf_cache_dir {cache_dir!r}") from None
    return MultilingualDomainClassifier(cache_dir=cache_dir, text_field=run.p.text_field, filter_by=run.p.domains)


def filter_stages(run: StepRun) -> dict[str, list[Any]]:
    """The configured filters, in pipeline order, by the name their counts are reported under."""
    filters = run.p.quality_filters or {}
    bounds = [filters.get(k) for k in ("min_words", "max_words")]
    if bounds.count(None) == 1:
        raise run.error("incomplete_word_filter", f"min_words = {bounds[0]}, max_words = {bounds[1]}")
    stages: dict[str, list[Any]] = {}
    if run.p.language_codes:
        stages["language"] = language_stages(run, filters)
    if None not in bounds:
        stages["word_count"] = [word_stage(run, filters)]
    if run.p.domains:
        stages["domain"] = [domain_stage(run)]
    return stages


def run(run: StepRun) -> StepResult:
    from nemo_curator.stages.text.io.reader import JsonlReader
    from nemo_curator.stages.text.io.writer import JsonlWriter

    files = input_files(run)
    check_file_memory(run, files, "large_file_oom")
    check_text_field(run, files)
    filters = filter_stages(run)
    writer = JsonlWriter(path=str(run.output_dir), mode="ignore")
    groups = [*filters.values(), [writer]]
    stages = [JsonlReader(file_paths=files), *(s for g in groups for s in g)]
    rows, executor = run_pipeline(run, "curate_nemo_curator", stages, files, run.p.ray.num_cpus, run.p.executor)
    received = [rows.get(execution_stages(group)[0].name, 0) for group in groups]
    shards = finish_shards(run.output_dir)
    stats: dict[str, Any] = {
        "files": len(files),
        "executor": executor,
        "shards": shards,
        "input_records": received[0],
        "kept_records": received[-1],
    }
    for (name, _), before, after in zip(filters.items(), received, received[1:], strict=False):
        stats[f"{name}_kept"], stats[f"{name}_dropped"] = after, before - after
    if received[-1] == 0:
        raise run.error(
            "empty_or_tiny_output", f"0 of {received[0]} records kept ({', '.join(filters) or 'no filters'})"
        )
    return StepResult(stats)
