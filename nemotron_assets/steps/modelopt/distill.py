"""optimize/modelopt/distill: knowledge distillation of a student from its teacher (usually the original checkpoint
the student was pruned or quantized from) with ModelOpt on Megatron-Core, on training data.

Teacher and student must share one tokenizer (same content fingerprint), or the logits they are compared on do not
mean the same tokens. Both HF models are imported into Megatron-Core through Megatron-Bridge's AutoBridge (the
teacher frozen) and ModelOpt's Megatron distillation plugin trains the student on the teacher's logits (logits KL).
The first `holdout_size` rows measure the student's mean token NLL before and after; the rest train it for
`args.train_iters` steps of `args.gbs` samples. The student's Megatron run directory is the published
checkpoint_megatron (loaded back and measured again); with `hf_export`, the bridge's HF export of the distilled
student lies in its `hf/` directory (a stage publishes one artifact, its primary product).
"""

from __future__ import annotations

from nemotron_assets.steps import StepResult, StepRun
from nemotron_assets.steps.automodel.train import base_model_record
from nemotron_assets.steps.data_prep.tokenizer import TokenizerUnavailable, load_tokenizer
from nemotron_assets.steps.launch import as_path
from nemotron_assets.steps.megatron_bridge.convert import HF_CONFIG
from nemotron_assets.steps.modelopt.common import HF_EXPORT, run_task, training_texts


def run(run: StepRun) -> StepResult:
    from transformers import AutoTokenizer

    if "training_jsonl" not in run.inputs:
        raise run.error("training_data_missing", "no training_jsonl input to distill on")
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
    holdout = run.p.holdout_size
    texts = training_texts(
        run, AutoTokenizer.from_pretrained(student), holdout + run.p.args.gbs * run.p.args.train_iters
    )
    if len(texts) <= holdout:
        raise run.error("not_enough_training_rows", f"{len(texts)} rows, all needed for the {holdout} held-out ones")
    job = {
        "teacher": as_path(teacher),
        "student": student,
        "holdout": texts[:holdout],
        "train": texts[holdout:],
        "steps": run.p.args.train_iters,
        "batch_size": run.p.args.gbs,
        "lr": run.p.args.lr,
        "max_tokens": run.p.args.seq_length,
        "output": run.output_dir,
        "hf_export": run.output_dir / HF_EXPORT if run.p.hf_export else None,
    }
    result = run_task(run, "distill", job)
    losses = result.pop("kd_loss")
    stats = result | {"kd_loss_first": losses[0], "kd_loss_last": losses[-1], "train_samples": len(job["train"])}
    record = {"teacher": base_model_record(teacher), "data": run.input("training_jsonl").version}
    provenance = {"distillation": record, HF_CONFIG: str(student)}  # the export's config and tokenizer
    if run.p.hf_export:
        stats["hf_export"] = record["hf_export"] = HF_EXPORT
    return StepResult(stats, provenance)
