"""Job backend of the ModelOpt steps: the torch work, launched through the profile's executor.

`quantize`: load the HF model, measure its mean token NLL on held-out texts, calibrate ModelOpt's quantizers on the
calibration texts (`mtq.quantize` with the recipe's config: fake-quant on CPU, real kernels on GPU), measure the
quantized model's NLL on the same texts, and write the deployable checkpoint with `export_hf_checkpoint`.
`distill`: train the student on the teacher's logits with `modelopt.torch.distill` (logits KD loss between the two
lm_heads), then export the plain student and save it. Each writes result.json into the work directory.
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


def batches(tokenizer, texts: list[str], max_tokens: int, device: str):
    for text in texts:
        yield tokenizer(text, return_tensors="pt", truncation=True, max_length=max_tokens).to(device)


def mean_nll(model, tokenizer, texts: list[str], max_tokens: int, device: str) -> float | None:
    """Mean next-token negative log-likelihood over the texts (token-weighted); None without texts."""
    import torch

    total, tokens = 0.0, 0
    with torch.no_grad():
        for batch in batches(tokenizer, texts, max_tokens, device):
            n = batch["input_ids"].shape[1] - 1
            if n < 1:
                continue
            total += model(**batch, labels=batch["input_ids"]).loss.item() * n
            tokens += n
    return total / tokens if tokens else None


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
    import modelopt.torch.distill as mtd
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(job["student"])
    teacher = AutoModelForCausalLM.from_pretrained(job["teacher"]).to(device).eval()
    student = AutoModelForCausalLM.from_pretrained(job["student"]).to(device)
    before = mean_nll(student, tokenizer, job["holdout"], job["max_tokens"], device)
    criterion = {("lm_head", "lm_head"): mtd.LogitsDistillationLoss()}
    model = mtd.convert(student, mode=[("kd_loss", {"teacher_model": teacher, "criterion": criterion})])
    optimizer = torch.optim.AdamW(model.parameters(), lr=job["lr"])
    texts, size, losses = job["train"], job["batch_size"], []
    model.train()
    for step in range(job["steps"]):
        total = 0.0
        for text in (texts[(step * size + i) % len(texts)] for i in range(size)):
            batch = tokenizer(text, return_tensors="pt", truncation=True, max_length=job["max_tokens"]).to(device)
            model(**batch)  # the teacher runs inside, without gradients
            loss = model.compute_kd_loss() / size
            loss.backward()
            total += loss.item()
        losses.append(total)
        optimizer.step()
        optimizer.zero_grad()
    student = mtd.export(model).eval()
    after = mean_nll(student, tokenizer, job["holdout"], job["max_tokens"], device)
    student.save_pretrained(job["output"])
    tokenizer.save_pretrained(job["output"])
    return {"device": device, "kd_loss": losses, "student_nll_before": before, "student_nll_after": after}


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
