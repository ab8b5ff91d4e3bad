"""End to end: the tiny pipeline through `dagster asset materialize`, and gating through blocking checks."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from conftest import DATA
from helpers import materialize_in_dagster, published

from nemotron_assets.fixtures.services import serve
from nemotron_assets.pipelines import PipelineSpec
from resources.artifact_store import ArtifactStore
from resources.profile import HardwareProfile

BIN = Path(sys.executable).parent
DATA_STAGES = ("chat_split", "packed_parquet", "binidx", "dpo_data", "rlvr_data")
DATA_BRANCH = ("curated", "translated", "synthetic", "byob_benchmark", "eval_byob")  # via the fixture services
MODEL_STAGES = ("eval_base", "lora", "eval_lora", "merged", "eval_merged", "cpt", "eval_cpt")
GATED = ("eval_lora", "eval_merged", "eval_cpt")


def latest_metadata(instance: dg.DagsterInstance, name: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey(["tiny", name]))
    return {key: value.value for key, value in event.asset_materialization.metadata.items()}


def check_status(instance: dg.DagsterInstance, name: str, check: str) -> str:
    return instance.get_latest_asset_check_evaluation_record(
        dg.AssetCheckKey(dg.AssetKey(["tiny", name]), check)
    ).status.value


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def materialize_tiny() -> subprocess.CompletedProcess[str]:
    command = [
        str(BIN / "dagster"),
        "asset",
        "materialize",
        "-m",
        "nemotron_assets.definitions",
        "--select",
        "group:tiny",
    ]
    return subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())


@pytest.fixture
def services() -> Iterator[None]:
    """The loopback LLM/NMT fixture services the data branch talks to (README: Data steps)."""
    with serve(port=8765):
        yield


def test_tiny_pipeline_through_the_dagster_cli(
    fixtures_dir: Path, artifact_root: Path, dagster_home: Path, services: None
):
    first = materialize_tiny()
    assert first.returncode == 0, first.stderr[-3000:]
    with dg.DagsterInstance.get() as instance:
        for name in DATA_STAGES + DATA_BRANCH + MODEL_STAGES:
            metadata = latest_metadata(instance, name)
            assert Path(metadata["path"]).is_relative_to(artifact_root)
            assert metadata["profile"] == "local_cpu" and metadata["reused"] is False
            assert check_status(instance, name, "contract") == "SUCCEEDED", name
        assert [check_status(instance, name, "quality_gate") for name in GATED] == ["SUCCEEDED"] * 3
        packed = latest_metadata(instance, "packed_parquet")
        assert packed["bins"] > 0 and 0 < packed["packing_efficiency"] <= 100
        lora = latest_metadata(instance, "lora")
        assert lora["final_loss"] < lora["first_loss"]
        assert latest_metadata(instance, "merged")["max_logit_difference"] < 1e-3
        curated, translated = latest_metadata(instance, "curated"), latest_metadata(instance, "translated")
        assert curated["input_records"] == 192 and 0 < curated["word_count_dropped"] == 192 - curated["kept_records"]
        assert translated["output_records"] == curated["kept_records"] and translated["faith_mean"] > 0
        assert latest_metadata(instance, "synthetic")["records"] == 4
        assert latest_metadata(instance, "byob_benchmark")["questions"] == 2

    second = materialize_tiny()
    assert second.returncode == 0, second.stderr[-3000:]
    with dg.DagsterInstance.get() as instance:
        assert all(latest_metadata(instance, name)["reused"] for name in DATA_STAGES + DATA_BRANCH + MODEL_STAGES)
        assert latest_metadata(instance, "packed_parquet")["data_version"] == packed["data_version"]

    summary = subprocess.run(
        [str(BIN / "nemotron-assets"), "demo", "summary"], capture_output=True, text=True, check=True
    )
    assert "tiny/packed_parquet" in summary.stdout and "packing efficiency" in summary.stdout
    assert "tiny/eval_lora" in summary.stdout and "MCQ accuracy" in summary.stdout
    assert "tiny/translated" in summary.stdout and "FAITH mean" in summary.stdout
    assert "quality gate succeeded" in summary.stdout and "dagster dev -w workspace.yaml" in summary.stdout


def chain(source: Path) -> PipelineSpec:
    return PipelineSpec.parse(
        {
            "name": "chain",
            "description": "two stages, the second consuming the first",
            "sources": [{"name": "pairs", "type": "training_jsonl", "path": str(source)}],
            "stages": [
                {
                    "name": "first",
                    "step": "data_prep/rl_prep",
                    "consumes": {"training_jsonl": "pairs"},
                    "preset": "tiny",
                },
                {
                    "name": "second",
                    "step": "data_prep/rl_prep",
                    "consumes": {"training_jsonl": "first"},
                    "preset": "tiny",
                },
            ],
        }
    )


def test_failing_blocking_check_stops_downstream(fixtures_dir: Path, tmp_path: Path):
    pipeline = chain(DATA / "tiny_dpo.jsonl")
    assert materialize_in_dagster(pipeline, tmp_path).success
    first = ArtifactStore(root=str(tmp_path)).current(("chain", "first"))[1]
    shard = next(first.rglob("*.jsonl"))
    shard.write_text(shard.read_text() + shard.read_text().splitlines()[0] + "\n")  # edited after publication

    result = materialize_in_dagster(pipeline, tmp_path)
    assert not result.success
    evaluation = next(e for e in result.get_asset_check_evaluations() if e.asset_key == dg.AssetKey(["chain", "first"]))
    assert not evaluation.passed and evaluation.metadata["error"].value == "artifact_digest_mismatch"
    done = {e.asset_key for e in result.get_asset_materialization_events() if e.asset_key}
    assert dg.AssetKey(["chain", "second"]) not in done


def test_named_error_fails_the_step_without_retries(fixtures_dir: Path, tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "same", "rejected": "same"}\n')
    result = materialize_in_dagster(chain(bad), tmp_path / "store")
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "invalid_dpo_preference_schema" in failure.event_specific_data.error.message
    assert published(ArtifactStore(root=str(tmp_path / "store")), ("chain", "first")) == []


def test_profile_choice_reaches_metadata(fixtures_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("NEMOTRON_PROFILE", "local_cpu")
    assert HardwareProfile().load().gpus == 0
    with pytest.raises(ValueError, match="unknown hardware profile 'dgx_superpod'"):
        HardwareProfile(name="dgx_superpod").load()
