"""The tiny pipeline's data branch, stage by stage through the stage runner, against the fixture services on the
port the pipeline names (the end-to-end test runs the same stages through the Dagster CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import materialize

from nemotron_assets.fixtures.services import serve, translate
from nemotron_assets.pipelines import PIPELINE_DIR, load_pipeline
from resources.artifact_store import ArtifactStore


@pytest.fixture(scope="module")
def services():
    with serve(port=8765) as server:
        yield server


def test_data_branch(fixtures_dir: Path, artifact_root: Path, services):
    pipeline = load_pipeline(PIPELINE_DIR / "tiny.yaml")
    store = ArtifactStore(root=str(artifact_root))
    run = {name: materialize(pipeline, store, name, cpus=2) for name in ("curated", "translated", "synthetic")}
    curated = run["curated"].stats
    assert curated["input_records"] == 192 and 0 < curated["kept_records"] < 192
    assert curated["word_count_dropped"] == 192 - curated["kept_records"]
    translated = run["translated"]
    assert translated.stats["input_records"] == curated["kept_records"] == translated.stats["output_records"]
    record = json.loads(next(translated.path.glob("*.jsonl")).read_text().splitlines()[0])
    segments = record["translation_metadata"]["segmented_translation"]["text"]
    assert segments and all(s["tgt"] == translate(s["src"], "en", "fr") for s in segments)
    assert run["synthetic"].stats["records"] == 4
    benchmark = materialize(pipeline, store, "byob_benchmark")
    assert benchmark.stats["questions"] == 2
    scored = materialize(pipeline, store, "eval_byob")  # eval/model_eval scores the generated benchmark
    assert scored.provenance["contract"]["type"] == "eval_results"
    assert services.requests["/v1/chat/completions"] > 0
