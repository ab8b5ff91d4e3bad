"""byob/mcq: a multiple-choice benchmark from your documents (NeMo Data Designer), or a benchmark translated with
NeMo Curator's TranslationStage, in the BYOB schema.

generate: documents input_dir/<subject>/*.txt (subjects = target_source_mapping's keys) are seeds of a Data Designer
llm_structured column asking for num_questions_per_query questions per document; each becomes a row with a stable
question_id (<subject>-<file>-<n>). translate: question and options go through the TranslationStage (LLM backend;
with remove_low_quality its FAITH judge drops questions below faith_threshold) while question_id, answer_index (and
the answer letter recomputed from it), cot_content, src and category are carried over untouched. Either way the
result is <expt_name>/benchmark.parquet; it is held-out evaluation data.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from nemotron_assets.steps import StepResult, StepRun
from nemotron_assets.steps.curator.runtime import run_pipeline
from nemotron_assets.steps.curator.translate import api_key, check_llm
from nemotron_assets.steps.data_designer.sdg import use_state_home

COLUMNS = ("question_id", "question", "options", "answer_index", "answer", "cot_content", "src", "category")
LETTERS = "ABCD"
MCQ_SCHEMA = {
    "type": "object",
    "properties": {
        "questions": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "question": {"type": "string"},
                    "options": {"type": "array", "items": {"type": "string"}, "minItems": 4, "maxItems": 4},
                    "answer": {"enum": list(LETTERS)},
                },
                "required": ["question", "options", "answer"],
            },
        }
    },
    "required": ["questions"],
}
PROMPT = (
    "Write {n} multiple-choice question(s) for a {{{{ subject }}}} exam that the document below answers. Each has "
    "four options and the letter of the correct one.\n\nDocument:\n{{{{ text }}}}"
)


def documents(run: StepRun) -> list[dict[str, str]]:
    """One seed row per document: <subject>/*.txt under the benchmark_source_corpus input (else input_dir) for
    every subject of target_source_mapping."""
    mapping = run.p.target_source_mapping or {}
    if not mapping:
        raise run.error("missing_byob_source_documents", "target_source_mapping names no target subject")
    root = run.input("benchmark_source_corpus").path if "benchmark_source_corpus" in run.inputs else None
    root = root or Path(run.p.input_dir)
    rows = []
    for subject in mapping:
        files = sorted((root / subject).glob("*.txt"))
        if not files:
            raise run.error("missing_byob_source_documents", f"no {root / subject}/*.txt")
        rows += [{"subject": subject, "file_name": f.stem, "text": f.read_text()} for f in files]
    return rows


def generated_rows(run: StepRun, seeds: list[dict[str, str]], scratch: Path) -> list[dict[str, Any]]:
    """Questions from Data Designer, one llm_structured call per document."""
    use_state_home()  # not the run's scratch: the variable outlives this step in the process
    import data_designer.config as dd
    from data_designer.interface.data_designer import DataDesigner
    from data_designer.interface.errors import DataDesignerGenerationError

    server = run.p.server
    seed_file = scratch / "seed.jsonl"
    seed_file.write_text("".join(json.dumps(row) + "\n" for row in seeds))
    provider = dd.ModelProvider(
        name="byob", endpoint=server["url"], provider_type="openai", api_key=server.get("api_key_env") or None
    )
    inference = dd.ChatCompletionInferenceParams(max_tokens=4096, temperature=0.0)
    model = dd.ModelConfig(alias="generator", model=server["model"], provider="byob", inference_parameters=inference)
    config = dd.DataDesignerConfigBuilder(model_configs=[model])
    config.with_seed_dataset(dd.LocalFileSeedSource(path=str(seed_file)), sampling_strategy=dd.SamplingStrategy.ORDERED)
    prompt = PROMPT.format(n=run.p.num_questions_per_query)
    config.add_column(
        dd.LLMStructuredColumnConfig(name="mcq", prompt=prompt, output_format=MCQ_SCHEMA, model_alias="generator")
    )
    designer = DataDesigner(scratch / "data_designer", model_providers=[provider])
    try:
        frame = designer.create(config, num_records=len(seeds), dataset_name=run.p.expt_name).load_dataset()
    except DataDesignerGenerationError as e:
        raise run.error("generation_failed", str(e)[:1000]) from None
    rows = []
    for record in frame.to_dict("records"):
        mcq = record["mcq"] if isinstance(record["mcq"], dict) else json.loads(record["mcq"])
        for n, item in enumerate(mcq["questions"]):
            index = LETTERS.index(item["answer"])
            rows.append(
                {
                    "question_id": f"{record['subject']}-{record['file_name']}-{n}",
                    "question": item["question"],
                    "options": list(item["options"]),
                    "answer_index": index,
                    "answer": LETTERS[index],
                    "cot_content": "-",
                    "src": "-",
                    "category": record["subject"],
                }
            )
    return rows


def translated_rows(run: StepRun, source: list[dict[str, Any]], scratch: Path) -> list[dict[str, Any]]:
    """question and options through Curator's TranslationStage (FAITH-filtered with remove_low_quality); everything
    else carried over by question_id. A question that came back with a translation error fails the step."""
    from nemo_curator.models.client.llm_client import GenerationConfig
    from nemo_curator.models.client.openai_client import AsyncOpenAIClient
    from nemo_curator.stages.text.experimental.translation import TranslationStage
    from nemo_curator.stages.text.io.reader import JsonlReader
    from nemo_curator.stages.text.io.writer import JsonlWriter

    server, key = run.p.server, api_key(run)
    check_llm(run, key)
    questions = scratch / "in" / "questions.jsonl"
    questions.parent.mkdir(parents=True)
    questions.write_text(
        "".join(json.dumps({k: row[k] for k in ("question_id", "question", "options")}) + "\n" for row in source)
    )
    stage = TranslationStage(
        source_lang=run.p.source_language,
        target_lang=run.p.target_language,
        text_field=["question", "options.*"],
        client=AsyncOpenAIClient(base_url=server["url"], api_key=key, max_concurrent_requests=8),
        model_name=server["model"],
        generation_config=GenerationConfig(max_tokens=2048, temperature=0.0),
        health_check=False,
        enable_faith_eval=run.p.remove_low_quality,
        faith_threshold=run.p.faith_threshold,
        faith_generation_config=GenerationConfig(max_tokens=2048, temperature=0.0),
        output_mode="replaced",
    )
    out = scratch / "out"
    reader = JsonlReader(file_paths=[str(questions)], read_kwargs={"engine": "pandas"})
    run_pipeline(run, "byob_translate", [reader, stage, JsonlWriter(path=str(out), mode="ignore")], [questions])
    translated = {
        row["question_id"]: row for f in out.glob("*.jsonl") for row in map(json.loads, f.read_text().splitlines())
    }
    failed = [row for row in translated.values() if row.get("translation_errors")]
    if failed:
        raise run.error(
            "translation_row_count_drift",
            f"{len(failed)} of {len(source)} questions untranslated, e.g. {failed[0]['translation_errors'][:300]}",
        )
    return [
        row
        | {"question": translated[row["question_id"]]["question"], "options": translated[row["question_id"]]["options"]}
        | {"answer": LETTERS[row["answer_index"]]}
        for row in source
        if row["question_id"] in translated
    ]


def source_benchmark(run: StepRun) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    from nemotron_assets.artifacts.files import data_files

    path = run.input("benchmark_parquet").path if "benchmark_parquet" in run.inputs else run.p.dataset_path
    if not path:
        raise run.error("mcq_schema_mismatch", "stage translate needs a benchmark_parquet input or dataset_path")
    rows = [r for f in data_files(Path(path), (".parquet",)) for r in pq.read_table(f).to_pylist()]
    missing = [c for c in COLUMNS if rows and c not in rows[0]]
    if not rows or missing:
        raise run.error("mcq_schema_mismatch", f"{path}: {'missing columns ' + str(missing) if rows else 'no rows'}")
    return [{k: row[k] for k in COLUMNS} for row in rows]


def run(run: StepRun) -> StepResult:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if run.p.family != "mcq":
        raise run.error("new_family_keeps_mcq_assumptions", f"family {run.p.family!r}")
    scratch = run.output_dir / ".byob"
    scratch.mkdir()
    if run.p.stage == "translate":
        if not run.p.source_language or not run.p.target_language:
            raise run.error("missing_language_codes", "translate needs source_language and target_language")
        source = source_benchmark(run)
        rows = translated_rows(run, source, scratch)
        stats = {"source_questions": len(source), "dropped": len(source) - len(rows)}
    else:
        rows = generated_rows(run, documents(run), scratch)
        stats = {"documents": len({(r["category"], r["question_id"].rsplit("-", 1)[0]) for r in rows})}
    shutil.rmtree(scratch)
    target = run.output_dir / run.p.expt_name
    target.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), target / "benchmark.parquet")
    stats |= {"questions": len(rows), "categories": len({r["category"] for r in rows}), "stage": run.p.stage}
    return StepResult(stats, {"held_out": True})
