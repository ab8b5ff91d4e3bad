"""Quality gates: a blocking check on the after-eval compares the evals around a stage (here inserted by the
pipeline's evaluation section); consumers of the stage's checkpoint depend on that eval, so a failing gate blocks
them."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from conftest import DATA
from helpers import materialize_in_dagster

from nemotron_assets.factory import pipeline_assets
from nemotron_assets.gates import GATES, settle
from nemotron_assets.model_card import sidecar
from nemotron_assets.pipelines import PipelineError, PipelineSpec
from resources.artifact_store import PROMOTED, ArtifactStore, write_provenance

EVAL_DATA = {"mcq_benchmark_parquet": "mcq", "training_jsonl": "chat_split"}  # its held-out rows


def gated(tolerance: float | None = None) -> PipelineSpec:
    """eval_base -> lora -> eval_lora -> merged: evaluations inserted by the evaluation section (none for merged),
    scoring the held-out split of what lora trains on."""
    evaluation = {"data": EVAL_DATA, "preset": "tiny", "names": {"base": "eval_base"}}
    return PipelineSpec.parse(
        {
            "name": "g",
            "description": "LoRA between two evaluations, then merged",
            "sources": [
                {"name": "chat", "type": "training_jsonl", "path": str(DATA / "tiny_chat.jsonl")},
                {"name": "mcq", "type": "mcq_benchmark_parquet", "path": str(DATA / "tiny_mcq.parquet")},
                {"name": "base", "type": "checkpoint_hf", "path": "${NEMOTRON_FIXTURES}/tiny-llama"},
            ],
            "evaluation": evaluation | ({} if tolerance is None else {"gate_tolerance": {"lora": tolerance}}),
            "stages": [
                {
                    "name": "chat_split",
                    "step": "data_prep/split",
                    "consumes": {"training_jsonl": "chat"},
                    "preset": "tiny",
                },
                {
                    "name": "lora",
                    "step": "peft/automodel",
                    "consumes": {"training_jsonl": "chat_split"},
                    "preset": "tiny",
                },
                {
                    "name": "merged",
                    "step": "convert/merge_lora",
                    "consumes": {"checkpoint_lora": "lora", "checkpoint_hf": "base"},
                    "evaluate": False,
                },
            ],
        }
    )


def gate(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    return next(e for e in result.get_asset_check_evaluations() if e.check_name == "quality_gate")


def materialized(result: dg.ExecuteInProcessResult) -> set[str]:
    return {e.asset_key.path[-1] for e in result.get_asset_materialization_events()}


def test_passing_gate_lets_downstream_run(fixtures_dir: Path, tmp_path: Path):
    # The tiny model's MCQ accuracy is noise (one of 48 questions is 0.021): a tolerance above that.
    result = materialize_in_dagster(gated(0.05), tmp_path)
    assert result.success
    evaluation = gate(result)
    assert evaluation.passed and evaluation.asset_key == dg.AssetKey(["g", "eval_lora"])
    assert "nemotron_chat_loss/nll_per_byte" in evaluation.metadata["comparison"].value
    assert evaluation.metadata["tolerance"].value == 0.05
    assert "merged" in materialized(result)


def test_failing_gate_blocks_downstream(fixtures_dir: Path, tmp_path: Path):
    result = materialize_in_dagster(gated(-1.0), tmp_path)  # require a gain of 1.0 on every score
    assert not result.success
    evaluation = gate(result)
    assert not evaluation.passed and "may not get worse by more than -1.0" in evaluation.description
    assert {"eval_base", "lora", "eval_lora"} <= materialized(result)
    assert "merged" not in materialized(result)
    version = next(e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == "lora")
    card = sidecar(tmp_path / "g" / "lora", version.materialization.metadata["data_version"].value).read_text()
    assert "Quality gate: **FAILED** (tolerance -1.0)" in card  # the model card beside the withdrawn version


def test_a_gate_decides_once(tmp_path: Path):
    """Re-running a gate check moves no pointer: the decision for (scored version, evaluations, tolerance) is
    recorded once; an old decision never touches a newer version's pointers."""
    store = ArtifactStore(root=str(tmp_path))
    key = ("g", "lora")
    for version in ("A", "B"):
        store.publish(key, version, lambda staging: None)

    def evaluation(name: str, scored: str) -> Path:
        path = tmp_path / "evals" / name
        path.mkdir(parents=True)
        write_provenance(
            path, {"type": "eval_results", "version": name, "inputs": [{"name": "lora", "version": scored}]}
        )
        return path

    before, after_a, after_b = evaluation("base", "X"), evaluation("after_a", "A"), evaluation("after_b", "B")
    store.set_current(key, "A")
    assert settle(store, key, before, after_a, True, 0.01) == "A" and store.current(key, PROMOTED)[0] == "A"
    store.set_current(key, "B")  # retrained: B is current, its gate fails
    assert settle(store, key, before, after_b, False, 0.01) == "A"
    store.set_current(key, "B")  # by hand, to inspect it
    assert settle(store, key, before, after_b, False, 0.01) == "B"  # the recorded decision: nothing moves
    assert settle(store, key, before, after_a, True, 0.01) == "B" and store.current(key, PROMOTED)[0] == "A"
    assert settle(store, key, before, after_b, True, 0.5) == "B"  # another tolerance: a new decision, B passes
    assert store.current(key, PROMOTED)[0] == "B"
    assert settle(store, key, before, after_a, False, 0.5) == "B"  # an old version's failure leaves B current
    assert len(list((store.artifact_dir(key) / GATES).iterdir())) == 4


def test_gate_needs_identical_settings(tmp_path: Path):
    import json

    from nemotron_assets.gates import compare

    sides = []
    for name, batch in (("a", 8), ("b", 16)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "settings.json").write_text(json.dumps({"batch_size": batch}))
        sides.append(tmp_path / name)
    passed, rows, reason = compare(*sides, "sft", 0.01)
    assert not passed and rows == [] and "settings differ in ['batch_size']" in reason


def test_bookend_targets_must_exist():
    spec = gated().model_dump()
    next(stage for stage in spec["stages"] if stage["name"] == "eval_lora")["config"]["target"] = "nowhere"
    with pytest.raises(PipelineError, match="target 'nowhere' is not a stage"):
        PipelineSpec.parse(spec)


def test_consumers_of_a_gated_checkpoint_depend_on_its_gate():
    defs = pipeline_assets(gated())
    assets = {a.key.path[-1]: a for a in defs if type(a) is dg.AssetsDefinition}  # not checks (a subclass)
    merged_deps = {k.path[-1] for k in assets["merged"].asset_deps[assets["merged"].key]}
    assert merged_deps == {"lora", "base", "eval_lora"}
    eval_deps = {k.path[-1] for k in assets["eval_lora"].asset_deps[assets["eval_lora"].key]}
    assert "eval_lora" not in eval_deps and "lora" in eval_deps


def test_a_megatron_checkpoint_is_gated_through_its_export(tmp_path: Path):
    """The evaluation scores the HF export; its gate decides on the Megatron stage's version (the export's input),
    and blocks the export's consumers, not the export."""
    from nemotron_assets.gates import scored_version

    export, evaluation = tmp_path / "distilled_hf", tmp_path / "eval"
    for path, inputs in (
        (export, [{"name": "distilled", "version": "D", "path": str(tmp_path / "distilled")}]),
        (evaluation, [{"name": "distilled_hf", "version": "H", "path": str(export)}]),
    ):
        path.mkdir()
        write_provenance(path, {"type": "eval_results", "version": path.name, "inputs": inputs})
    assert scored_version(evaluation, "distilled") == "D" and scored_version(evaluation, "distilled_hf") == "H"

    sources = [
        {"name": "chat", "type": "training_jsonl", "path": str(DATA / "tiny_chat.jsonl")},
        {"name": "mcq", "type": "mcq_benchmark_parquet", "path": str(DATA / "tiny_mcq.parquet")},
        {"name": "base", "type": "checkpoint_hf", "path": "/models/base"},
    ]
    stages = [
        {"name": "mcore", "step": "convert/hf_to_megatron", "consumes": {"checkpoint_hf": "base"}},
        {"name": "back", "step": "convert/megatron_to_hf", "consumes": {"checkpoint_megatron": "mcore"}},
        {
            "name": "small",
            "step": "optimize/modelopt/prune",
            "consumes": {"checkpoint_hf": "back", "training_jsonl": "chat"},
        },
    ]
    evaluation_section = {"data": {"mcq_benchmark_parquet": "mcq", "training_jsonl": "chat"}, "preset": "tiny"}
    spec = PipelineSpec.parse(
        {"name": "m", "description": "d", "sources": sources, "stages": stages, "evaluation": evaluation_section}
    )
    assets = {a.key.path[-1]: a for a in pipeline_assets(spec) if type(a) is dg.AssetsDefinition}
    deps = {name: {k.path[-1] for k in a.asset_deps[a.key]} for name, a in assets.items()}
    assert deps["back"] == {"mcore"}  # the scored export waits on no gate
    assert deps["eval_back"] == {"back", "mcq", "chat"}
    assert "eval_back" in deps["small"]  # the export's consumer waits on the Megatron stage's gate
