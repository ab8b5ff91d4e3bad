"""optimize/modelopt/distill: real ModelOpt logits distillation of Megatron-Core models on CPU, the original tiny
Llama teaching a one-layer student cut from it, saved as a Megatron checkpoint (loaded back and measured again) with
the student's HF export in its hf/ directory; the tokenizer check and the data check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import DATA
from helpers import another_tokenizer, materialize, one_stage_pipeline
from transformers import AutoModelForCausalLM, AutoTokenizer

from nemotron_assets.artifacts import validate
from nemotron_assets.artifacts.binidx import BLEND_FILE, document_lengths, read_blend, read_index, window_count, windows
from nemotron_assets.digests import content_digest
from nemotron_assets.errors import NamedError
from nemotron_assets.pipelines import PipelineSpec
from nemotron_assets.steps.modelopt.common import record_text
from resources.artifact_store import ArtifactStore


def distill_pipeline(
    teacher: Path, student: Path, data: tuple[str, Path] = ("training_jsonl", DATA / "tiny_chat.jsonl"), **config: Any
) -> PipelineSpec:
    """The student distilled on `data` (its type, its path)."""
    return PipelineSpec.parse(
        {
            "name": "t",
            "description": "distill",
            "sources": [
                {"name": "student", "type": "checkpoint_hf", "path": str(student)},
                {"name": "data", "type": data[0], "path": str(data[1])},
            ],
            "stages": [
                {
                    "name": "out",
                    "step": "optimize/modelopt/distill",
                    "consumes": {"checkpoint_hf": "student", data[0]: "data"},
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


@pytest.fixture(scope="module")
def distilled(teacher: Path, tmp_path_factory: pytest.TempPathFactory):
    student = one_layer_student(teacher, tmp_path_factory.mktemp("student"))
    store = ArtifactStore(root=str(tmp_path_factory.mktemp("store")))
    return student, materialize(distill_pipeline(teacher, student), store)


def test_student_learns_from_the_teacher(teacher: Path, distilled):
    student, result = distilled
    stats = result.stats
    assert stats["device"] == "cpu" and stats["kd_loss_last"] < stats["kd_loss_first"]
    assert stats["train_samples"] == 12
    assert 0 < stats["student_nll_after"] < stats["student_nll_before"]
    assert stats["student_nll_restored"] == pytest.approx(stats["student_nll_after"], rel=1e-5)
    contract = result.provenance["contract"]
    assert contract["iteration_dir"] == "iter_0000000" and contract["has_run_config"]
    assert not (result.path / "iter_0000000" / "modelopt_state").exists()  # a plain student: no distillation state
    assert result.provenance["distillation"] == {
        "teacher": {"name_or_path": str(teacher), "fingerprint": content_digest(teacher)},
        "data": result.provenance["inputs"][1]["version"],
        "hf_export": "hf",
    }
    assert result.provenance["hf_config"] == str(student)  # what convert/megatron_to_hf exports it with


def test_hf_export_is_the_distilled_student(distilled):
    """The hf/ export loads in transformers: the Megatron student's logits, and its held-out NLL."""
    student, result = distilled
    stats, export = result.stats, result.path / "hf"
    assert stats["hf_export"] == "hf" and validate(export, "checkpoint_hf")["has_chat_template"]
    assert stats["export_logit_difference"] <= 1e-5 * stats["largest_logit"]
    assert json.loads((export / "config.json").read_text())["num_hidden_layers"] == 1
    distilled_model = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32)
    original = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32)
    assert not all(a.equal(b) for a, b in zip(distilled_model.parameters(), original.parameters(), strict=True))
    assert hf_nll(distilled_model, export, rows=8) == pytest.approx(stats["student_nll_after"], rel=1e-4)


def hf_nll(model, tokenizer_dir: Path, rows: int, max_tokens: int = 256) -> float:
    """The HF model's mean token NLL on the first `rows` chat rows (the tiny preset's held-out rows)."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    lines = (DATA / "tiny_chat.jsonl").read_text().splitlines()[:rows]
    total, tokens = 0.0, 0
    for text in (record_text(json.loads(line), tokenizer) for line in lines):
        ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_tokens)["input_ids"]
        with torch.no_grad():
            total += model(ids, labels=ids).loss.item() * (ids.shape[1] - 1)
        tokens += ids.shape[1] - 1
    return total / tokens


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


def test_without_hf_export_only_the_megatron_checkpoint(teacher: Path, tmp_path: Path, monkeypatch):
    """hf_export = false: the job gets no export directory and the step reports none."""
    from nemotron_assets.catalog import CATALOG
    from nemotron_assets.steps import InputArtifact, StepRun
    from nemotron_assets.steps.modelopt import distill as modelopt_distill

    jobs = []

    def job(run, task, spec):
        jobs.append(spec)
        return {"kd_loss": [0.2, 0.1], "student_nll_before": 6.0, "student_nll_after": 5.0}

    monkeypatch.setattr(modelopt_distill, "run_task", job)
    step = CATALOG.step("optimize/modelopt/distill")
    inputs = {
        "checkpoint_hf": InputArtifact("student", "checkpoint_hf", teacher, "v1"),
        "training_jsonl": InputArtifact("data", "training_jsonl", DATA / "tiny_chat.jsonl", "v2"),
    }
    params = step.preset_values("tiny") | {"args.teacher_hf_path": str(teacher), "hf_export": False}
    result = modelopt_distill.run(StepRun(step, params, inputs, tmp_path / "out", tmp_path / "work"))
    assert jobs[0]["hf_export"] is None and "hf_export" not in result.stats
    assert "hf_export" not in result.provenance["distillation"] and result.stats["kd_loss_last"] == 0.1


def test_a_batch_pads_each_row_on_the_right_and_masks_the_padding():
    from nemotron_assets.steps.modelopt.job import padded

    tokens, labels, mask = padded([torch.tensor([[5, 6, 7, 8]]), torch.tensor([[9, 10]])])
    assert tokens.tolist() == [[5, 6, 7], [9, 10, 0]] and labels.tolist() == [[6, 7, 8], [10, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]


@pytest.fixture(scope="module")
def bins(teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny corpus as pretraining tokens, made with the teacher's (and so the student's) tokenizer."""
    store = ArtifactStore(root=str(tmp_path_factory.mktemp("bins")))
    pipeline = one_stage_pipeline("data_prep/pretrain_prep", DATA / "tiny_corpus.jsonl", tokenizer=str(teacher))
    return materialize(pipeline, store).path


def test_token_windows_cover_every_document(bins: Path):
    prefixes = [prefix for _, prefix in read_blend(bins / BLEND_FILE)["train"]]
    index = read_index(prefixes[0])
    got = list(windows(prefixes[:1], 16))
    assert len(got) == window_count(prefixes[:1], 16) and all(2 <= len(w) <= 16 for w in got)
    tokens = np.fromfile(f"{prefixes[0]}.bin", dtype=index.dtype)
    dropped = int((document_lengths(index) % 16 == 1).sum())  # a last window of one token predicts nothing
    assert sum(len(w) for w in got) == len(tokens) - dropped and np.array_equal(got[0], tokens[: len(got[0])])


def test_distillation_on_pretraining_tokens(teacher: Path, bins: Path, tmp_path: Path):
    """The seed's input: binidx from pretrain_prep, in windows of seq_length tokens, the first ones held out."""
    student = one_layer_student(teacher, tmp_path / "student")
    pipeline = distill_pipeline(teacher, student, ("binidx", bins), **{"args.seq_length": 64})
    result = materialize(pipeline, ArtifactStore(root=str(tmp_path / "store")))
    stats = result.stats
    assert stats["train_samples"] == 12 and stats["kd_loss_last"] < stats["kd_loss_first"]
    assert 0 < stats["student_nll_after"] < stats["student_nll_before"]
    (bins_input,) = [i for i in result.provenance["inputs"] if i["type"] == "binidx"]
    assert result.provenance["distillation"]["data"] == bins_input["version"]


def test_pretraining_tokens_of_another_tokenizer(teacher: Path, fixtures_dir: Path, tmp_path: Path):
    store = ArtifactStore(root=str(tmp_path / "store"))
    other = one_stage_pipeline(
        "data_prep/pretrain_prep",
        DATA / "tiny_corpus.jsonl",
        tokenizer=str(another_tokenizer(fixtures_dir / "tiny-bpe", tmp_path / "other")),
    )
    bins = materialize(other, store).path
    pipeline = distill_pipeline(teacher, one_layer_student(teacher, tmp_path / "student"), ("binidx", bins))
    with pytest.raises(NamedError) as e:
        materialize(pipeline, store)
    assert e.value.name == "teacher_student_or_tokenizer_mismatch" and "was tokenized with" in e.value.detail
