"""optimize/modelopt/distill: real ModelOpt logits distillation on CPU, the original tiny Llama teaching a one-layer
student cut from it; the tokenizer check and the data check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import DATA
from helpers import materialize
from transformers import AutoModelForCausalLM, AutoTokenizer

from nemotron_assets.digests import content_digest
from nemotron_assets.errors import NamedError
from nemotron_assets.pipelines import PipelineSpec
from resources.artifact_store import ArtifactStore


def distill_pipeline(teacher: Path, student: Path, **config: Any) -> PipelineSpec:
    return PipelineSpec.parse(
        {
            "name": "t",
            "description": "distill",
            "sources": [
                {"name": "student", "type": "checkpoint_hf", "path": str(student)},
                {"name": "data", "type": "training_jsonl", "path": str(DATA / "tiny_chat.jsonl")},
            ],
            "stages": [
                {
                    "name": "out",
                    "step": "optimize/modelopt/distill",
                    "consumes": {"checkpoint_hf": "student", "training_jsonl": "data"},
                    "preset": "tiny",
                    "config": {"args.teacher_hf_path": str(teacher)} | config,
                }
            ],
        }
    )


def one_layer_student(teacher: Path, target: Path) -> Path:
    """The teacher's first decoder layer only: a pruned student sharing the teacher's tokenizer."""
    model = AutoModelForCausalLM.from_pretrained(teacher)
    model.model.layers = model.model.layers[:1]
    model.config.num_hidden_layers = 1
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(teacher).save_pretrained(target)
    return target


@pytest.fixture(scope="module")
def teacher(fixtures_dir: Path) -> Path:
    return fixtures_dir / "tiny-llama"


def test_student_learns_from_the_teacher(teacher: Path, tmp_path: Path):
    student = one_layer_student(teacher, tmp_path / "student")
    result = materialize(distill_pipeline(teacher, student), ArtifactStore(root=str(tmp_path / "store")))
    stats = result.stats
    assert stats["device"] == "cpu" and stats["kd_loss_last"] < stats["kd_loss_first"]
    assert stats["train_samples"] == 12 and stats["student_nll_before"] > 0 and stats["student_nll_after"] > 0
    assert json.loads((result.path / "config.json").read_text())["num_hidden_layers"] == 1
    distilled = AutoModelForCausalLM.from_pretrained(result.path)
    original = AutoModelForCausalLM.from_pretrained(student)
    assert not all(a.equal(b) for a, b in zip(distilled.parameters(), original.parameters(), strict=True))
    assert result.provenance["distillation"]["teacher"] == {
        "name_or_path": str(teacher),
        "fingerprint": content_digest(teacher),
    }


def test_tokenizer_mismatch(teacher: Path, tmp_path: Path):
    student = one_layer_student(teacher, tmp_path / "student")
    tokenizer = AutoTokenizer.from_pretrained(student)
    tokenizer.add_tokens(["<extra_token>"])
    tokenizer.save_pretrained(student)
    with pytest.raises(NamedError) as e:
        materialize(distill_pipeline(teacher, student), ArtifactStore(root=str(tmp_path / "store")))
    assert e.value.name == "teacher_student_or_tokenizer_mismatch" and "vocab 513" in e.value.detail
    assert "share one tokenizer" in e.value.recovery


def test_training_data_missing(teacher: Path, tmp_path: Path):
    from nemotron_assets.catalog import CATALOG
    from nemotron_assets.steps import InputArtifact, StepRun
    from nemotron_assets.steps.modelopt import distill as modelopt_distill

    step = CATALOG.step("optimize/modelopt/distill")
    inputs = {"checkpoint_hf": InputArtifact("student", "checkpoint_hf", teacher, "v1")}
    run = StepRun(step, step.preset_values("tiny"), inputs, tmp_path / "out", tmp_path / "work")
    with pytest.raises(NamedError) as e:
        modelopt_distill.run(run)
    assert e.value.name == "training_data_missing" and "Wire the student's training data" in e.value.recovery


def test_not_enough_training_rows(teacher: Path, tmp_path: Path):
    student = one_layer_student(teacher, tmp_path / "student")
    with pytest.raises(NamedError) as e:
        materialize(distill_pipeline(teacher, student, holdout_size=48), ArtifactStore(root=str(tmp_path / "store")))
    assert e.value.name == "not_enough_training_rows" and "lower holdout_size" in e.value.recovery
