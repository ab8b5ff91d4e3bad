"""byob/mcq: generation through Data Designer, translation through Curator, against the fixture service; the
benchmark stays held out of training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import DATA
from helpers import materialize, published

from nemotron_assets.errors import NamedError
from nemotron_assets.fixtures.services import ServiceServer, translate
from nemotron_assets.pipelines import PipelineSpec
from resources.artifact_store import ArtifactStore

COLUMNS = ["question_id", "question", "options", "answer_index", "answer", "cot_content", "src", "category"]


def byob_pipeline(preset: str, sources: list[dict] | None = None, consumes: dict | None = None, **config: Any):
    stage = {"name": "out", "step": "byob/mcq", "consumes": consumes or {}, "preset": preset, "config": config}
    return PipelineSpec.parse({"name": "t", "description": "test", "sources": sources or [], "stages": [stage]})


def documents(root: Path) -> Path:
    (root / "geography").mkdir(parents=True)
    (root / "geography" / "rivers.txt").write_text("The Lisk is the longest river of Zorbia.")
    (root / "geography" / "peaks.txt").write_text("Mount Ilvar is the highest peak of Zorbia.")
    return root


def translate_pipeline(server: ServiceServer, path: Path, **config: Any) -> PipelineSpec:
    source = [{"name": "bench", "type": "mcq_benchmark_parquet", "path": str(path)}]
    base = {"server": {"url": f"{server.url}/v1", "model": "m"}, "source_language": "en", "target_language": "fr"}
    return byob_pipeline("translate", source, {"benchmark_parquet": "bench"}, **(base | config))


def test_generate_from_documents(store: ArtifactStore, tmp_path: Path, server: ServiceServer):
    pipeline = byob_pipeline(
        "tiny", input_dir=str(documents(tmp_path / "docs")), server={"url": f"{server.url}/v1", "model": "m"}
    )
    result = materialize(pipeline, store)
    table = pq.read_table(result.path / "byob_mcq_tiny" / "benchmark.parquet")
    assert table.column_names == COLUMNS
    rows = table.to_pylist()
    assert sorted(r["question_id"] for r in rows) == ["geography-peaks-0", "geography-rivers-0"]
    for row in rows:
        assert len(row["options"]) == 4 and row["answer"] == "ABCD"[row["answer_index"]]
        assert (row["category"], row["cot_content"], row["src"]) == ("geography", "-", "-")
    assert result.stats["questions"] == 2 and result.provenance["held_out"] is True
    assert result.provenance["contract"] == {"type": "mcq_benchmark_parquet", "questions": 2}


def test_translate_keeps_row_identity_and_answers(store: ArtifactStore, tmp_path: Path, server: ServiceServer):
    result = materialize(translate_pipeline(server, DATA / "tiny_mcq.parquet"), store, cpus=2)
    original = pq.read_table(DATA / "tiny_mcq.parquet").to_pylist()
    translated = pq.read_table(result.path / "byob_mcq_default" / "benchmark.parquet").to_pylist()
    assert [r["question_id"] for r in translated] == [r["question_id"] for r in original]
    for before, after in zip(original, translated, strict=True):
        assert after["answer_index"] == before["answer_index"] and after["answer"] == before["answer"]
        assert after["question"] == translate(before["question"], "en", "fr")
        assert after["options"] == [translate(o, "en", "fr") for o in before["options"]]
        assert (after["category"], after["cot_content"]) == (before["category"], before["cot_content"])
    assert translated[0]["question"] == "Quel est le capitale de Zorbia?"
    assert result.stats["dropped"] == 0


def test_remove_low_quality_drops_questions_below_the_faith_threshold(
    store: ArtifactStore, tmp_path: Path, server: ServiceServer
):
    known = {"question": "What is the capital?", "options": ["the city", "the river", "the sea", "the lake"]}
    unknown = {"question": "What is the capital of Zorbia?", "options": ["Dunmark", "Vireo", "Ilvar", "Quintar"]}
    carried = {"answer_index": 0, "answer": "A", "cot_content": "-", "src": "-", "category": "c"}
    rows = [
        {"question_id": f"q{i}", **row, **carried} for i, row in enumerate([known, unknown])
    ]  # the fixture judge scores a translation 5 when it knows every word, 3 when words stay untranslated
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "bench.parquet")
    pipeline = translate_pipeline(server, tmp_path / "bench.parquet", remove_low_quality=True, faith_threshold=4.0)
    result = materialize(pipeline, store, cpus=2)
    translated = pq.read_table(result.path / "byob_mcq_default" / "benchmark.parquet").to_pylist()
    assert [(r["question_id"], r["question"]) for r in translated] == [("q0", "Quel est le capitale?")]
    assert translated[0]["options"] == ["le ville", "le fleuve", "le mer", "le lac"]
    assert result.stats["dropped"] == 1 and result.stats["questions"] == 1


def test_an_untranslated_question_is_a_named_error(store: ArtifactStore, tmp_path: Path, server: ServiceServer):
    pipeline = translate_pipeline(server, DATA / "tiny_mcq.parquet", target_language="de")  # the fixture: en -> fr
    with pytest.raises(NamedError, match="translation_row_count_drift: 48 of 48 questions untranslated") as raised:
        materialize(pipeline, store, cpus=2)
    assert "serves the language pair" in raised.value.recovery and published(store) == []


def test_a_benchmark_is_never_fed_to_training(store: ArtifactStore, tmp_path: Path, server: ServiceServer):
    pipeline = byob_pipeline(
        "tiny", input_dir=str(documents(tmp_path / "docs")), server={"url": f"{server.url}/v1", "model": "m"}
    )
    benchmark = materialize(pipeline, store).path
    # the published benchmark handed to data prep under a training type: recognised by its recorded type
    spec = {
        "name": "leak", "description": "test",
        "sources": [{"name": "data", "type": "training_jsonl", "path": str(benchmark)}],
        "stages": [
            {"name": "out", "step": "data_prep/sft_packing", "consumes": {"training_jsonl": "data"}, "preset": "tiny"}
        ],
    }  # fmt: skip
    with pytest.raises(NamedError, match="held_out_benchmark_in_training") as raised:
        materialize(PipelineSpec.parse(spec), store)
    assert "never training or data-prep input" in raised.value.recovery
    assert published(store, ("leak", "out")) == []


@pytest.mark.parametrize(
    ("preset", "config", "error", "recovery"),
    [
        ("tiny", {"input_dir": "/nonexistent"}, "missing_byob_source_documents", "named after each key"),
        ("tiny", {"family": "open_qa"}, "new_family_keeps_mcq_assumptions", "needs its own schema"),
        ("translate", {"source_language": None}, "missing_language_codes", "source_language and target_language"),
        ("translate", {"dataset_path": "QUESTIONS_ONLY"}, "mcq_schema_mismatch", "restore those columns"),
    ],
)
def test_errors(store: ArtifactStore, tmp_path: Path, preset: str, config: dict, error: str, recovery: str):
    if config.get("dataset_path") == "QUESTIONS_ONLY":  # a parquet without the BYOB columns
        pq.write_table(pa.table({"question": ["What?"]}), tmp_path / "q.parquet")
        config = {"dataset_path": str(tmp_path / "q.parquet")}
    with pytest.raises(NamedError, match=error) as raised:
        materialize(byob_pipeline(preset, **config), store)
    assert recovery in raised.value.recovery
    assert published(store) == []
