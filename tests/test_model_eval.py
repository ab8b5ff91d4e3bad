"""eval/model_eval through lm-evaluation-harness on the shipped task files, and the eval_results contract."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import DATA

from nemotron_assets.artifacts import validate
from nemotron_assets.errors import NamedError
from nemotron_assets.execution import run_stage
from nemotron_assets.pipelines import PipelineSpec
from resources.artifact_store import ArtifactStore

DATA_INPUTS = {"mcq_benchmark_parquet": "mcq", "training_jsonl": "split"}  # the split's held-out rows


def eval_pipeline(**stages: dict) -> PipelineSpec:
    sources = [
        {"name": "chat", "type": "training_jsonl", "path": str(DATA / "tiny_chat.jsonl")},
        {"name": "mcq", "type": "mcq_benchmark_parquet", "path": str(DATA / "tiny_mcq.parquet")},
        {"name": "base", "type": "checkpoint_hf", "path": "${NEMOTRON_FIXTURES}/tiny-llama"},
    ]
    specs = [{"name": name, "preset": "tiny"} | body for name, body in stages.items()]
    return PipelineSpec.parse({"name": "t", "description": "eval", "sources": sources, "stages": specs})


def run(pipeline: PipelineSpec, name: str, store: ArtifactStore):
    stage = pipeline.stage(name)
    return run_stage(pipeline, stage, pipeline.params(stage), store, "local_cpu")


@pytest.fixture(scope="module")
def scored(fixtures_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    pipeline = eval_pipeline(
        split={"step": "data_prep/split", "consumes": {"training_jsonl": "chat"}},
        base_eval={"step": "eval/model_eval", "consumes": {"checkpoint_hf": "base"} | DATA_INPUTS},
        lora={"step": "peft/automodel", "consumes": {"training_jsonl": "split"}},
        lora_eval={"step": "eval/model_eval", "consumes": {"checkpoint_lora": "lora"} | DATA_INPUTS},
        id_eval={
            "step": "eval/model_eval",
            "consumes": DATA_INPUTS,
            "config": {"model": "${NEMOTRON_FIXTURES}/tiny-llama"},
        },
    )
    store = ArtifactStore(root=str(tmp_path_factory.mktemp("store")))
    return {name: run(pipeline, name, store) for name in ("split", "base_eval", "lora", "lora_eval", "id_eval")}


def test_scores_settings_and_checkpoint_are_recorded(fixtures_dir: Path, scored):
    result = scored["base_eval"]
    scores = json.loads((result.path / "results.json").read_text())["scores"]
    assert set(scores) == {"nemotron_mcq", "nemotron_chat_loss"}
    assert 0 <= scores["nemotron_mcq"]["acc"] <= 1 and scores["nemotron_chat_loss"]["nll_per_byte"] > 0
    settings = json.loads((result.path / "settings.json").read_text())
    assert settings["harness"].startswith("lm-eval ") and settings["backend"] == "hf" and settings["dtype"] == "float32"
    assert json.loads((result.path / "checkpoint.json").read_text())["name"] == "base"
    assert validate(result.path, "eval_results")["nemotron_mcq/acc"] == scores["nemotron_mcq"]["acc"]
    assert result.stats["nemotron_chat_loss/nll_per_byte"] == scores["nemotron_chat_loss"]["nll_per_byte"]


def test_a_lora_is_scored_on_its_recorded_base(fixtures_dir: Path, scored):
    checkpoint = json.loads((scored["lora_eval"].path / "checkpoint.json").read_text())
    assert checkpoint["type"] == "checkpoint_lora" and checkpoint["base_model"] == str(fixtures_dir / "tiny-llama")
    before = scored["base_eval"].stats["nemotron_chat_loss/nll_per_byte"]
    after = scored["lora_eval"].stats["nemotron_chat_loss/nll_per_byte"]
    assert after < before  # trained on the other conversations of the same facts: held-out loss drops too


def test_scoring_a_model_by_id_equals_scoring_its_checkpoint(scored):
    assert scored["id_eval"].stats == scored["base_eval"].stats


def test_eval_needs_data_and_a_model(fixtures_dir: Path, tmp_path: Path):
    pipeline = eval_pipeline(
        nothing={"step": "eval/model_eval", "consumes": {"checkpoint_hf": "base"}},
        no_model={"step": "eval/model_eval", "consumes": DATA_INPUTS | {"training_jsonl": "chat"}},
    )
    store = ArtifactStore(root=str(tmp_path))
    with pytest.raises(NamedError, match="no_eval_data"):
        run(pipeline, "nothing", store)
    with pytest.raises(NamedError, match="no_checkpoint_to_evaluate"):
        run(pipeline, "no_model", store)


def test_eval_results_contract(scored, tmp_path: Path):
    broken = Path(shutil.copytree(scored["base_eval"].path, tmp_path / "broken"))
    (broken / "results.json").write_text(json.dumps({"scores": {"t": {"acc": "high"}}}))
    with pytest.raises(NamedError, match="invalid_eval_results"):
        validate(broken, "eval_results")
    (broken / "settings.json").unlink()
    with pytest.raises(NamedError, match="invalid_eval_results: .*missing"):
        validate(broken, "eval_results")


def test_mcq_benchmark_contract(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = pq.read_table(DATA / "tiny_mcq.parquet").to_pylist()
    rows[3]["answer"] = "Z"
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "bad.parquet")
    with pytest.raises(NamedError, match="mcq_schema_mismatch: .*row 3"):
        validate(tmp_path / "bad.parquet", "mcq_benchmark_parquet")
    assert validate(DATA / "tiny_mcq.parquet", "mcq_benchmark_parquet")["questions"] == 48
