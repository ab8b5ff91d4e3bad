"""Job backend of the ModelOpt steps: the torch work, launched through the profile's executor.

Both import HF models as Megatron-Core models through Megatron-Bridge's AutoBridge, save a Megatron checkpoint
(`bridge.save_megatron_model`), load it back and measure it again, and write an optional HF export.
`quantize`: measure the model's mean token NLL on held-out texts, calibrate ModelOpt's quantizers on the calibration
texts (`mtq.quantize` with the recipe's config: fake-quant on CPU, real kernels on GPU), measure the quantized model
on the same texts; the HF export is ModelOpt's unified (deployable) one.
`distill`: train the student on the teacher's logits with ModelOpt's Megatron distillation plugin (logits KL
between the two output layers), measuring the student before and after; the HF export is the bridge's own.
Each writes result.json into the work directory.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from nemotron_assets.job import JobSpec

PRUNE_SCRIPT = "/opt/Model-Optimizer/examples/megatron_bridge/prune_minitron.py"
RECIPES = {  # args.export_quant_cfg -> ModelOpt config name
    "fp8": "FP8_DEFAULT_CFG",
    "fp8_blockwise": "FP8_2D_BLOCKWISE_WEIGHT_ONLY_CFG",
    "int8_sq": "INT8_SMOOTHQUANT_CFG",
    "int4_awq": "INT4_AWQ_CFG",
    "w4a8_awq": "W4A8_AWQ_BETA_CFG",
    "nvfp4": "NVFP4_DEFAULT_CFG",
}


def quant_config(recipe: str) -> dict[str, Any]:
    import modelopt.torch.quantization as mtq

    return getattr(mtq, RECIPES[recipe])


def enabled_quantizers(recipe: str) -> list[Any]:
    """The recipe's enabled quantizer settings, validated by ModelOpt's own schema."""
    from modelopt.torch.quantization.config import QuantizeConfig

    config = QuantizeConfig.model_validate(quant_config(recipe))
    enabled = [entry.cfg for entry in config.quant_cfg if entry.enable is not False and entry.cfg is not None]
    return [one for cfg in enabled for one in (cfg if isinstance(cfg, list) else [cfg])]


def block_size(recipe: str) -> int:
    """The recipe's block along a weight's input dimension (1: not block-quantized), from ModelOpt's config."""
    blocks = [(cfg.block_sizes or {}).get(-1) for cfg in enabled_quantizers(recipe) if hasattr(cfg, "block_sizes")]
    return max((b for b in blocks if b), default=1)


def quantize(job: dict[str, Any]) -> dict[str, Any]:
    """Quantize the HF model as Megatron-Core models (Megatron-Bridge's AutoBridge) and save them as a Megatron
    checkpoint with their ModelOpt state; the saved checkpoint is loaded back and must give the quantized model's
    held-out NLL. With `hf_export`, ModelOpt's unified HF export of the quantized model goes there too."""
    import modelopt.torch.quantization as mtq
    import torch
    from transformers import AutoTokenizer

    from nemotron_assets.artifacts.checkpoints import megatron_iteration_dir
    from nemotron_assets.steps.megatron_bridge import convert_job, no_te

    cpu = not torch.cuda.is_available()
    dtype = torch.float32 if cpu else torch.bfloat16
    bridge = convert_job.hf_bridge(job["model"], dtype, tp=job["tp"])
    models = convert_job.megatron_models(bridge, SimpleNamespace(tp=job["tp"], pp=1, ep=1, etp=1), cpu)
    tokenizer = AutoTokenizer.from_pretrained(job["model"])
    model = models[0].eval()
    holdout = [ids for ids in token_ids(tokenizer, job["holdout"], job["max_tokens"]) if ids.shape[1] > 1]
    before = megatron_nll(model, holdout)

    def forward_loop(m) -> None:
        for ids in token_ids(tokenizer, job["calibration"], job["max_tokens"]):
            convert_job.megatron_forward(m, ids)

    mtq.quantize(model, quant_config(job["recipe"]), forward_loop=forward_loop)
    after = megatron_nll(model, holdout)
    quantizers = [m for name, m in model.named_modules() if name.endswith("_quantizer") and m.is_enabled]
    bridge.save_megatron_model(models, job["output"], hf_tokenizer_path=job["model"])
    if job["hf_export"]:
        export = no_te.modelopt_megatron_export()
        export(model, job["model"], dtype=dtype, export_dir=str(Path(job["hf_export"])))
    del models, model
    restored = convert_job.load_checkpoint(megatron_iteration_dir(Path(job["output"])), cpu)[0].eval()
    return {
        "device": "cpu" if cpu else "cuda",
        "enabled_quantizers": len(quantizers),
        "restored_quantizers": sum(m.is_enabled for n, m in restored.named_modules() if n.endswith("_quantizer")),
        "nll_before": before,
        "nll_after": after,
        "nll_restored": megatron_nll(restored, holdout),
    }


def token_ids(tokenizer, texts: list[str], max_tokens: int):
    """Each text's token ids as a [1, tokens] tensor, truncated to `max_tokens`."""
    for text in texts:
        yield tokenizer(text, return_tensors="pt", truncation=True, max_length=max_tokens)["input_ids"]


def megatron_nll(model, samples) -> float | None:
    """A Megatron GPT model's mean next-token negative log-likelihood over [1, tokens] samples (token-weighted,
    through its own loss, tensor-parallel safe); None without samples."""
    from nemotron_assets.steps.megatron_bridge.convert_job import megatron_forward

    total, tokens = 0.0, 0
    for ids in samples:
        loss = megatron_forward(model, ids[:, :-1], ids[:, 1:])
        total += loss.float().sum().item()
        tokens += loss.numel()
    return total / tokens if tokens else None


def distill(job: dict[str, Any]) -> dict[str, Any]:
    """Distil the student on the teacher's logits, both imported as Megatron-Core models (Megatron-Bridge's
    AutoBridge), through ModelOpt's Megatron distillation plugin (logits KL, the student's own LM loss skipped) and
    Megatron-Bridge's KD loss function; save the student as a Megatron checkpoint, load it back and measure it again,
    and with `hf_export` write its HF export (the bridge's Megatron -> HF) there."""
    import modelopt.torch.distill as mtd
    import torch
    from transformers import AutoTokenizer

    from nemotron_assets.artifacts.checkpoints import megatron_iteration_dir
    from nemotron_assets.steps.megatron_bridge import convert_job

    cpu = not torch.cuda.is_available()
    parallel = SimpleNamespace(tp=1, pp=1, ep=1, etp=1)
    bridge = convert_job.hf_bridge(job["student"], torch.float32)  # the trained weights are AdamW's master copy
    student = convert_job.megatron_models(bridge, parallel, cpu)[0]
    teacher_bridge = convert_job.hf_bridge(job["teacher"], torch.float32 if cpu else torch.bfloat16)
    teacher = convert_job.megatron_models(teacher_bridge, parallel, cpu)[0].eval()
    tokenizer = AutoTokenizer.from_pretrained(job["student"])
    holdout = [ids for ids in token_ids(tokenizer, job["holdout"], job["max_tokens"]) if ids.shape[1] > 1]
    train = [ids for ids in token_ids(tokenizer, job["train"], job["max_tokens"]) if ids.shape[1] > 1]
    before, teacher_nll = megatron_nll(student.eval(), holdout), megatron_nll(teacher, holdout)
    # imported once hf_bridge has imported Megatron-Bridge (with its stand-ins where Transformer Engine is absent)
    import modelopt.torch.distill.plugins.megatron as mtd_mcore
    from megatron.bridge.training.post_training.distillation import ModelOptDistillConfig

    config = mtd_mcore.setup_distillation_config(ModelOptDistillConfig(), student.config, teacher.config)
    kd = {"teacher_model": teacher, "criterion": config.criterion, "loss_balancer": config.loss_balancer}
    model = mtd.convert(student, mode=[("kd_loss", kd)])
    mtd_mcore.adjust_distillation_model_for_mcore(model, config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=job["lr"])
    size, losses = job["batch_size"], []
    model.train()
    for step in range(job["steps"]):
        total = 0.0
        for ids in (train[(step * size + i) % len(train)] for i in range(size)):
            output = convert_job.megatron_forward(model, ids[:, :-1], ids[:, 1:], grad=True)  # teacher inside
            loss = kd_loss(model, output) / size
            loss.backward()
            total += loss.item()
        losses.append(total)
        optimizer.step()
        optimizer.zero_grad()
    student = plain_student(mtd.export(model)).eval()
    after = megatron_nll(student, holdout)
    bridge.save_megatron_model([student], job["output"], hf_tokenizer_path=job["student"])
    result = {"device": "cpu" if cpu else "cuda", "kd_loss": losses, "teacher_nll": teacher_nll}
    if job["hf_export"]:
        bridge.save_hf_pretrained([student], job["hf_export"], show_progress=False)
        result |= convert_job.export_difference(bridge, [student], job["hf_export"])
    del student, model, teacher
    restored = convert_job.load_checkpoint(megatron_iteration_dir(Path(job["output"])), cpu)[0].eval()
    restored_nll = megatron_nll(restored, holdout)
    return result | {"student_nll_before": before, "student_nll_after": after, "student_nll_restored": restored_nll}


def kd_loss(model, output):
    """The mean per-token KD loss of one sample, through Megatron-Bridge's distillation loss function (the loss
    its training step uses: the ModelOpt criterion's per-token losses, masked and tensor-parallel reduced)."""
    import torch
    from megatron.bridge.training.post_training.distillation import loss_func_kd

    def lm_loss(per_token):
        return per_token.float().sum(), torch.tensor(per_token.numel(), device=per_token.device), {}

    loss, tokens, _ = loss_func_kd(output, torch.ones_like(output, dtype=torch.float), lm_loss, model)
    return loss / tokens


# what ModelOpt's adjust_distillation_model_for_mcore sets on the student instance
MCORE_DISTILL_OVERRIDES = (
    "forward",
    "compute_language_model_loss",
    "sharded_state_dict",
    "set_input_tensor",
    "set_student_input_tensor_shape",
)


def plain_student(student):
    """The student `mtd.export` returns, without the per-instance methods the Megatron plugin set on it (the
    teacher forward, the skipped LM loss, the teacher-hiding state dict) and without the ModelOpt state the
    distillation modes left (the student came from HF without any): a plain GPT model, saved without modelopt_state."""
    import modelopt.torch.opt as mto

    for name in MCORE_DISTILL_OVERRIDES:
        vars(student).pop(name, None)
    if mto.ModeloptStateManager.is_converted(student):
        mto.ModeloptStateManager.remove_state(student)
    return student


def prune(job: dict[str, Any]) -> dict[str, Any]:
    """ModelOpt's own Minitron example (prune_minitron.py in the Megatron-Bridge image) on the job's flags, one rank
    of the torchrun the job entry point started."""
    sys.argv = [PRUNE_SCRIPT, *job["argv"]]
    runpy.run_path(PRUNE_SCRIPT, run_name="__main__")
    return {"script": PRUNE_SCRIPT}


def run(spec: JobSpec) -> None:
    """The spec's `task` (quantize, distill, prune) on its args; result.json in the work directory."""
    job = dict(spec.args)
    result = {"quantize": quantize, "distill": distill, "prune": prune}[job.pop("task")](job)
    if int(os.environ.get("RANK", "0")) == 0:
        (Path(spec.work_dir) / "result.json").write_text(json.dumps(result))
