"""optimize/modelopt/distill: knowledge distillation of a student from its teacher (usually the original checkpoint
the student was pruned or quantized from) with ModelOpt on Megatron-Core, on training data.

Teacher and student must share one tokenizer (same content fingerprint), or the logits they are compared on do not
mean the same tokens. Both HF models are imported into Megatron-Core through Megatron-Bridge's AutoBridge (the
teacher frozen) and ModelOpt's Megatron distillation plugin trains the student on the teacher's logits (logits KL).
The data is training_jsonl rows (chat through the student's chat template) or, as in the seed catalog, pretraining
tokens (binidx: the train split of its blend.json, each document in windows of `args.seq_length` tokens, made with
the student's tokenizer). The first `holdout_size` samples measure the student's mean token NLL before and after;
the rest train it for `args.train_iters` steps of `args.gbs` samples. The student's Megatron run directory is the
published checkpoint_megatron (loaded back and measured again); with `hf_export`, the bridge's HF export of the
distilled student lies in its `hf/` directory (a stage publishes one artifact, its primary product).
"""

from __future__ import annotations

from pathlib import Path

from nemotron_assets.artifacts.binidx import BLEND_FILE, read_blend, window_count
from nemotron_assets.artifacts.files import tokenizer_fingerprint
from nemotron_assets.steps import StepResult, StepRun
from nemotron_assets.steps.automodel.train import base_model_record
from nemotron_assets.steps.data_prep.tokenizer import TokenizerUnavailable, load_tokenizer
from nemotron_assets.steps.launch import as_path
from nemotron_assets.steps.megatron_bridge.convert import HF_CONFIG
from nemotron_assets.steps.modelopt.common import HF_EXPORT, run_task, training_texts


def run(run: StepRun) -> StepResult:
    from transformers import AutoTokenizer

    data = next((name for name in ("binidx", "training_jsonl") if name in run.inputs), None)
    if data is None:
        raise run.error("training_data_missing", "no binidx or training_jsonl input to distill on")
    teacher, student = run.p.args.teacher_hf_path, run.input("checkpoint_hf").path
    try:
        tokenizers = {"teacher": load_tokenizer(teacher), "student": load_tokenizer(str(student))}
    except TokenizerUnavailable as e:
        raise run.error("teacher_student_or_tokenizer_mismatch", f"cannot load a tokenizer: {e}") from None
    fingerprints = {role: t.fingerprint for role, t in tokenizers.items()}
    if fingerprints["teacher"] != fingerprints["student"]:
        raise run.error(
            "teacher_student_or_tokenizer_mismatch",
            f"teacher {teacher} tokenizer {fingerprints['teacher'][:12]} (vocab {tokenizers['teacher'].vocab_size}), "
            f"student {run.input('checkpoint_hf').name} {fingerprints['student'][:12]} "
            f"(vocab {tokenizers['student'].vocab_size})",
        )
    holdout, wanted = run.p.holdout_size, run.p.holdout_size + run.p.args.gbs * run.p.args.train_iters
    if data == "binidx":
        samples = token_windows(run, fingerprints["student"])
        available = window_count(samples["binidx"], run.p.args.seq_length)
    else:
        samples = {"texts": training_texts(run, AutoTokenizer.from_pretrained(student), wanted)}
        available = len(samples["texts"])
    if available <= holdout:
        raise run.error("not_enough_training_rows", f"{available} samples, all needed for the {holdout} held-out ones")
    job = {
        "teacher": as_path(teacher),
        "student": student,
        "data": samples,
        "holdout": holdout,
        "steps": run.p.args.train_iters,
        "batch_size": run.p.args.gbs,
        "lr": run.p.args.lr,
        "max_tokens": run.p.args.seq_length,
        "output": run.output_dir,
        "hf_export": run.output_dir / HF_EXPORT if run.p.hf_export else None,
    }
    result = run_task(run, "distill", job)
    losses = result.pop("kd_loss")
    stats = result | {
        "kd_loss_first": losses[0],
        "kd_loss_last": losses[-1],
        "train_samples": min(available, wanted) - holdout,
    }
    record = {"teacher": base_model_record(teacher), "data": run.input(data).version}
    provenance = {"distillation": record, HF_CONFIG: str(student)}  # the export's config and tokenizer
    if run.p.hf_export:
        stats["hf_export"] = record["hf_export"] = HF_EXPORT
    return StepResult(stats, provenance)


def token_windows(run: StepRun, student_fingerprint: str) -> dict[str, list[Path]]:
    """The job's data from binidx: the train split's shards, tokenized with the student's tokenizer."""
    bins = run.input("binidx").path
    made_with = tokenizer_fingerprint(bins)
    if made_with and made_with != student_fingerprint:
        raise run.error(
            "teacher_student_or_tokenizer_mismatch",
            f"{run.input('binidx').name} was tokenized with {made_with[:12]}, the student's tokenizer is "
            f"{student_fingerprint[:12]}",
        )
    return {"binidx": [prefix for _, prefix in read_blend(bins / BLEND_FILE)["train"]]}
