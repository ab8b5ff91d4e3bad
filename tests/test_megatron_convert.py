"""convert/hf_to_megatron and convert/megatron_to_hf: real AutoBridge conversions of the tiny Llama on CPU through the
stage runner (round trip = the gate), and each named error, publishing nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import job_spec, materialize, materialize_in_dagster, published

from nemotron_assets.artifacts import validate
from nemotron_assets.catalog import CATALOG
from nemotron_assets.errors import NamedError
from nemotron_assets.job import JobSpec
from nemotron_assets.pipelines import PipelineSpec
from nemotron_assets.steps import InputArtifact, StepRun
from nemotron_assets.steps.megatron_bridge import convert as megatron_convert
from resources.artifact_store import ArtifactStore

PORTS = {"convert/hf_to_megatron": "checkpoint_hf", "convert/megatron_to_hf": "checkpoint_megatron"}


def stage(step: str, source: Path, **config: Any) -> PipelineSpec:
    return PipelineSpec.parse(
        {
            "name": "t",
            "description": "test",
            "sources": [{"name": "data", "type": PORTS[step], "path": str(source)}],
            "stages": [
                {"name": "out", "step": step, "consumes": {PORTS[step]: "data"}, "preset": "tiny", "config": config}
            ],
        }
    )


@pytest.fixture(scope="module")
def round_trip(fixtures_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """tiny Llama -> Megatron (gated by its round trip) -> HF, each published by the stage runner."""
    model = fixtures_dir / "tiny-llama"
    store = ArtifactStore(root=str(tmp_path_factory.mktemp("store")))
    imported = materialize(stage("convert/hf_to_megatron", model), store)
    exported = materialize(
        stage("convert/megatron_to_hf", imported.path, hf_model_id=""),  # the HF model hf_to_megatron recorded
        ArtifactStore(root=str(tmp_path_factory.mktemp("store2"))),
    )
    return {"model": model, "imported": imported, "exported": exported}


def test_hf_to_megatron_round_trip_is_exact(round_trip):
    provenance = round_trip["imported"].provenance
    assert provenance["type"] == "checkpoint_megatron"
    assert provenance["contract"]["iteration"] == 0 and provenance["contract"]["checkpoint_format"] == "torch_dist"
    stats = provenance["stats"]
    assert stats["round_trip_logit_difference"] <= 1e-4 * stats["largest_logit"]
    assert stats["megatron_logit_difference"] < 1e-5 and stats["parameters"] == 123_712
    assert (round_trip["imported"].path / "iter_0000000" / "run_config.yaml").exists()


def test_megatron_to_hf_loads_in_transformers_with_the_source_logits(round_trip):
    from transformers import AutoModelForCausalLM

    exported = round_trip["exported"]
    assert exported.provenance["exported_from"]["iteration"] == 0
    assert exported.provenance["exported_from"]["megatron"].endswith("iter_0000000")  # resolved via the tracker
    assert (
        exported.provenance["exported_from"]["hf"]
        == round_trip["imported"].provenance["hf_config"]
        == str(round_trip["model"])
    )
    assert validate(exported.path, "checkpoint_hf")["parameters"] > 0
    probe = torch.arange(1, 40).unsqueeze(0)
    with torch.no_grad():
        source = AutoModelForCausalLM.from_pretrained(round_trip["model"]).eval()(probe).logits
        back = AutoModelForCausalLM.from_pretrained(exported.path, dtype=torch.float32).eval()(probe).logits
    assert torch.allclose(source, back, atol=1e-5)


def expect(error: str, step: str, source: Path, store: ArtifactStore, **config: Any) -> NamedError:
    with pytest.raises(NamedError) as e:
        materialize(stage(step, source, **config), store)
    assert e.value.name == error and e.value.recovery == CATALOG.step(step).recovery(error)
    assert not [p for p in published(store) if not p.startswith(".")]  # nothing published
    return e.value


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(root=str(tmp_path / "store"))


def test_adapter_or_training_folder_is_not_a_clean_source(fixtures_dir: Path, store, tmp_path: Path):
    source = tmp_path / "run"
    shutil.copytree(fixtures_dir / "tiny-llama", source)
    (source / "optimizer.pt").write_bytes(b"x")
    expect("source_not_clean_hf_checkpoint", "convert/hf_to_megatron", source, store)


def test_output_inside_the_source(fixtures_dir: Path, store, tmp_path: Path):
    source = tmp_path / "model"
    shutil.copytree(fixtures_dir / "tiny-llama", source)
    inside = ArtifactStore(root=str(source / "store"))  # the artifact would be written inside the model directory
    error = expect("output_path_overlaps_source", "convert/hf_to_megatron", source, inside)
    assert "NEMOTRON_ARTIFACT_ROOT" in error.recovery


def test_unsupported_architecture_is_named(fixtures_dir: Path, store, tmp_path: Path):
    source = tmp_path / "model"
    shutil.copytree(fixtures_dir / "tiny-llama", source)
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps(config | {"architectures": ["LlamaModel"]}))
    expect("unsupported_or_custom_architecture", "convert/hf_to_megatron", source, store)


def test_round_trip_mismatch_publishes_nothing(fixtures_dir: Path, store, monkeypatch):
    """A conversion that maps a weight wrongly changes the logits; the gate refuses it."""
    report = {"largest_logit": 1.3, "round_trip_logit_difference": 0.4, "megatron_logit_difference": 0.4}
    monkeypatch.setattr(megatron_convert, "convert", lambda run, arguments: report)
    error = expect("round_trip_logits_mismatch", "convert/hf_to_megatron", fixtures_dir / "tiny-llama", store)
    assert "0.4" in error.detail


def test_megatron_logits_mismatch_publishes_nothing(fixtures_dir: Path, store, monkeypatch):
    """Weights that round-trip exactly but a Megatron model computing other logits (a config mismatch)."""
    report = {"largest_logit": 1.3, "round_trip_logit_difference": 0.0, "megatron_logit_difference": 0.4}
    monkeypatch.setattr(megatron_convert, "convert", lambda run, arguments: report)
    error = expect("megatron_logits_mismatch", "convert/hf_to_megatron", fixtures_dir / "tiny-llama", store)
    assert "megatron_tolerance 0.01" in error.detail


def test_run_directory_as_megatron_path(round_trip, store):
    run_dir = round_trip["imported"].path
    error = expect(
        "bad_megatron_checkpoint_path", "convert/megatron_to_hf", run_dir, store,
        megatron_path=str(run_dir), hf_model_id=str(round_trip["model"]),
    )  # fmt: skip
    assert "iter_NNNNNNN" in error.recovery


def test_incomplete_checkpoint(round_trip, store, tmp_path: Path):
    run_dir = tmp_path / "run"
    shutil.copytree(round_trip["imported"].path, run_dir)
    (run_dir / "iter_0000000" / "metadata.json").unlink()
    (run_dir / "provenance.json").unlink()
    expect(
        "incomplete_or_async_checkpoint", "convert/megatron_to_hf", run_dir, store,
        megatron_path=str(run_dir / "iter_0000000"), hf_model_id=str(round_trip["model"]),
    )  # fmt: skip


def test_export_needs_the_hf_config_and_tokenizer(round_trip, store):
    expect("missing_hf_config_or_tokenizer", "convert/megatron_to_hf", round_trip["imported"].path, store)


def test_export_of_a_checkpoint_that_records_no_hf_model(round_trip, store, tmp_path: Path):
    checkpoint = shutil.copytree(round_trip["imported"].path, tmp_path / "checkpoint")
    provenance = json.loads((checkpoint / "provenance.json").read_text())
    del provenance["hf_config"]
    (checkpoint / "provenance.json").write_text(json.dumps(provenance))
    error = expect("missing_hf_config_or_tokenizer", "convert/megatron_to_hf", checkpoint, store, hf_model_id="")
    assert "records no HF model" in error.detail


def test_export_mismatch_publishes_nothing(round_trip, store, monkeypatch):
    report = {"largest_logit": 1.3, "export_logit_difference": 0.2}
    monkeypatch.setattr(megatron_convert, "convert", lambda run, arguments: report)
    expect(
        "export_logits_mismatch", "convert/megatron_to_hf", round_trip["imported"].path, store,
        hf_model_id=str(round_trip["model"]),
    )  # fmt: skip


@pytest.mark.parametrize(("distributed", "gpus", "nproc"), [(True, 8, 8), (True, 0, 1), (False, 8, 1)])
def test_distributed_conversion_runs_over_the_node(fixtures_dir: Path, tmp_path: Path, distributed, gpus, nproc):
    """The job spec asks for torchrun over the node's GPUs only for a distributed conversion with GPUs."""
    launched: list[JobSpec] = []

    def record(command: list[str], env: dict[str, str]) -> None:
        launched.append(job_spec(command))
        raise RuntimeError("recorded")

    step = CATALOG.step("convert/hf_to_megatron")
    params = step.preset_values("tiny") | {"distributed": distributed, "torchrun.nproc_per_node": 8}
    params["torch_dtype"] = "bfloat16"
    inputs = {"checkpoint_hf": InputArtifact("model", "checkpoint_hf", fixtures_dir / "tiny-llama", "v")}
    run = StepRun(step, params, inputs, tmp_path / "out", tmp_path / "work", gpus, launcher=record)
    with pytest.raises(RuntimeError, match="recorded"):
        megatron_convert.hf_to_megatron(run)
    (job,) = launched
    assert job.backend == "megatron_bridge.convert" and job.nproc_per_node == nproc
    assert job.args["direction"] == "import" and job.args["hf"] == str(fixtures_dir / "tiny-llama")
    assert job.args["dtype"] == "bfloat16"  # torch_dtype, the one dtype parameter


def test_round_trip_through_dagster_and_its_launcher(fixtures_dir: Path, tmp_path: Path):
    """HF -> Megatron -> HF as two assets materialized by Dagster, each conversion launched through Pipes."""
    model = str(fixtures_dir / "tiny-llama")
    pipeline = PipelineSpec.parse(
        {
            "name": "mt",
            "description": "HF -> Megatron -> HF",
            "sources": [{"name": "model", "type": "checkpoint_hf", "path": model}],
            "stages": [
                {"name": "mcore", "step": "convert/hf_to_megatron", "consumes": {"checkpoint_hf": "model"},
                 "preset": "tiny"},
                {"name": "back", "step": "convert/megatron_to_hf", "consumes": {"checkpoint_megatron": "mcore"},
                 "preset": "tiny", "config": {"hf_model_id": model}},
            ],
        }
    )  # fmt: skip
    result = materialize_in_dagster(pipeline, tmp_path / "store")
    assert result.success
    metadata = {
        e.step_key: {k: getattr(v, "value", v) for k, v in e.materialization.metadata.items()}
        for e in result.all_events
        if e.event_type_value == "ASSET_MATERIALIZATION"
    }
    assert metadata["mt__mcore"]["round_trip_logit_difference"] == 0.0 and metadata["mt__mcore"]["launcher"] == "local"
    assert metadata["mt__back"]["iteration"] == 0 and metadata["mt__back"]["export_logit_difference"] < 1e-5
