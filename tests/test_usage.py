"""Usage and cost per materialization: in metadata, in provenance, summed per pipeline by `demo summary`."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml
from conftest import DATA
from helpers import materialize_in_dagster

from nemotron_assets.demo import summary
from nemotron_assets.pipelines import PipelineSpec
from nemotron_assets.usage import usage
from resources.artifact_store import ArtifactStore

PACKED = {
    "name": "use",
    "description": "chat data packed: a CPU step that reports the tokens it processed",
    "sources": [{"name": "chat", "type": "training_jsonl", "path": str(DATA / "tiny_chat.jsonl")}],
    "stages": [
        {
            "name": "packed",
            "step": "data_prep/sft_packing",
            "consumes": {"training_jsonl": "chat"},
            "preset": "tiny",
            "config": {"tokenizer": "${NEMOTRON_BASE_MODEL}"},
        }
    ],
}


def test_gpu_hours_only_where_the_gpus_were_held_for_the_wall_time():
    assert usage(1800, 8, "local", {"trained_tokens": 5}, 2.5) == {
        "wall_seconds": 1800,
        "gpus": 8,
        "gpu_hours": 4.0,
        "cost": 10.0,
        "tokens": 5,
    }
    assert usage(1800, 8, "slurm", {"tokens": 7}, 2.5) == {"wall_seconds": 1800, "gpus": 8, "tokens": 7}
    assert usage(60, 0, "slurm", {}, None) == {"wall_seconds": 60, "gpus": 0, "gpu_hours": 0.0}


def test_usage_in_metadata_provenance_and_summary(fixtures_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "use.yaml").write_text(yaml.safe_dump(PACKED))
    monkeypatch.setenv("NEMOTRON_PIPELINE_DIRS", str(tmp_path / "pipelines"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    with dg.DagsterInstance.get() as instance:
        result = materialize_in_dagster(PipelineSpec.parse(PACKED), tmp_path / "store", instance=instance)
    assert result.success
    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    tokens = metadata["tokens"].value
    assert metadata["usage/tokens"].value == tokens > 0 and metadata["usage/gpu_hours"].value == 0
    provenance = ArtifactStore(root=str(tmp_path / "store")).current(("use", "packed"))[1] / "provenance.json"
    recorded = yaml.safe_load(provenance.read_text())["usage"]
    assert recorded["tokens"] == tokens and recorded["wall_seconds"] == metadata["usage/wall_seconds"].value
    assert f"{tokens:,} tokens" in summary("use").splitlines()[-4]
