"""optimize/modelopt/quantize: post-training quantization with ModelOpt on Megatron-Core, calibrated on the training
data, saved as a Megatron checkpoint that carries its quantizers (ModelOpt state), with ModelOpt's deployable HF export
(quantized weights + hf_quant_config.json, for TensorRT-LLM and vLLM) beside it.

The consumed HF model is imported into Megatron-Core through Megatron-Bridge's AutoBridge (tensor parallel over
`args.tp` processes) and `mtq.quantize` calibrates its quantizers. The Megatron run directory is the published
checkpoint_megatron (the layout convert/hf_to_megatron writes; loading it restores the quantizers); with `hf_export`,
the unified HF export lies in its `hf/` directory (a stage publishes one artifact, its primary product).

The format follows the GPU the checkpoint is for (`deploy_gpu`, else the hardware profile's [gpu] model): `auto`
picks NVFP4 on Blackwell and FP8 on Hopper/Ada; a format the GPU cannot run is refused before any work. The first
`args.calib_size` rows of the consumed training_jsonl calibrate; the next `holdout_size` rows (never the calibration
rows) measure the Megatron model's mean token NLL before and after quantization (the quantized model's own forward:
fake-quant on CPU), and a relative increase over `max_drop` fails the step; the saved checkpoint is loaded back and
measured again. NVFP4 calibration needs CUDA: on CPU its config is
validated by ModelOpt's schema and the step says it cannot run here.
"""

from __future__ import annotations

import json

from nemotron_assets.hardware import QUANT_FORMATS, architecture
from nemotron_assets.steps import StepResult, StepRun
from nemotron_assets.steps.modelopt.common import HF_EXPORT, SUPPORTED, target_gpu, training_texts
from nemotron_assets.steps.modelopt.job import block_size, enabled_quantizers

HEADS = ("num_attention_heads", "num_key_value_heads")
PRE_QUANT_SCALED = ("int8_sq", "int4_awq", "w4a8_awq")  # SmoothQuant/AWQ: no unified HF export from Megatron


def recipe_for(run: StepRun) -> tuple[str, str | None]:
    """(ModelOpt recipe, target GPU), or unsupported_quant_recipe."""
    wanted, gpu = run.p.args.export_quant_cfg, target_gpu(run, run.p.deploy_gpu)
    if gpu is None:
        if wanted == "auto":
            raise run.error("unsupported_quant_recipe", f"profile {run.profile} has no GPU to pick the format for")
        return wanted, None
    arch = architecture(gpu)
    recipe = QUANT_FORMATS.get(arch, "int8_sq") if wanted == "auto" else wanted
    if recipe not in SUPPORTED.get(arch, ("int8_sq", "int4_awq")):
        raise run.error("unsupported_quant_recipe", f"{recipe} does not run on {gpu} ({arch})")
    return recipe, gpu


def check_blocks(run: StepRun, recipe: str, config: dict) -> None:
    """Block formats quantize each linear layer's input in blocks: every input width must divide (ModelOpt's export
    fails after calibration otherwise)."""
    block = block_size(recipe)
    heads = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    widths = {
        "hidden_size": config["hidden_size"],
        "intermediate_size": config.get("intermediate_size", block),
        "attention output (heads x head_dim)": config["num_attention_heads"] * heads,
    }
    uneven = {name: width for name, width in widths.items() if width % block}
    if uneven:
        detail = f"{recipe} quantizes linear inputs in blocks of {block}; these widths do not divide: {uneven}"
        raise run.error("unsupported_quant_recipe", detail)


def check_tensor_parallel(run: StepRun, config: dict) -> None:
    """args.tp processes, one per GPU (one without GPUs), each holding whole attention heads and KV groups."""
    tp = run.p.args.tp
    heads = {name: config.get(name) or config["num_attention_heads"] for name in HEADS}
    uneven = [f"{name} {count}" for name, count in heads.items() if count % tp]
    if tp > max(run.gpus, 1) or uneven:
        why = ", ".join(uneven) or f"this run has {run.gpus} GPUs"
        raise run.error("world_size_not_divisible", f"args.tp {tp}: {why}")


def run(run: StepRun) -> StepResult:
    from transformers import AutoTokenizer

    recipe, gpu = recipe_for(run)
    if recipe == "nvfp4" and not run.gpus:
        rules = len(enabled_quantizers(recipe))
        raise run.error(
            "unsupported_quant_recipe",
            f"nvfp4 calibration needs a CUDA GPU (Blackwell); its ModelOpt config is valid ({rules} quantizer rules) "
            f"but this run has no GPU (profile {run.profile})",
        )
    if "training_jsonl" not in run.inputs:
        raise run.error("calibration_data_missing", "no training_jsonl input to calibrate on")
    model = run.input("checkpoint_hf").path
    config = json.loads((model / "config.json").read_text())
    check_blocks(run, recipe, config)
    check_tensor_parallel(run, config)
    if run.p.hf_export and recipe in PRE_QUANT_SCALED:
        detail = f"{recipe} scales activations before quantizing, which ModelOpt's Megatron -> HF export refuses"
        raise run.error("hf_export_unsupported", detail)
    calib, holdout = run.p.args.calib_size, run.p.holdout_size
    texts = training_texts(run, AutoTokenizer.from_pretrained(model), calib + holdout)
    data = run.input("training_jsonl").name
    if len(texts) < calib:
        raise run.error(
            "not_enough_calibration_rows", f"args.calib_size is {calib} but {data} holds only {len(texts)} rows"
        )
    if len(texts) == calib:
        raise run.error(
            "tiny_calibration_used_as_quality_signal",
            f"{data} holds {len(texts)} rows, all calibration rows (args.calib_size {calib}): none left to measure on",
        )
    hf_export = run.output_dir / HF_EXPORT if run.p.hf_export else None
    job = {
        "model": model,
        "recipe": recipe,
        "calibration": texts[:calib],
        "holdout": texts[calib:],
        "max_tokens": run.p.calib_max_tokens,
        "tp": run.p.args.tp,
        "output": run.output_dir,
        "hf_export": hf_export,
    }
    report = run.work_dir / "result.json"
    report.unlink(missing_ok=True)
    run.launch_job("modelopt", {"task": "quantize"} | job, nproc_per_node=run.p.args.tp, torchrun=run.p.args.tp > 1)
    result = json.loads(report.read_text())
    increase = (result["nll_after"] - result["nll_before"]) / result["nll_before"]
    if increase > run.p.max_drop:
        raise run.error(
            "quantization_quality_drop",
            f"mean token NLL on held-out rows rose {increase:.2%} "
            f"({result['nll_before']:.4f} -> {result['nll_after']:.4f}), over max_drop {run.p.max_drop:.2%}",
        )
    record = {"recipe": recipe, "deploy_gpu": gpu, "calib_size": calib}
    if hf_export:
        exported = json.loads((hf_export / "hf_quant_config.json").read_text())["quantization"]
        record |= {"quant_algo": exported["quant_algo"], "hf_export": HF_EXPORT}
    stats = (
        result
        | record
        | {
            "calibration_samples": calib,
            "holdout_samples": len(job["holdout"]),
            "relative_nll_increase": increase,
        }
    )
    return StepResult(stats, {"quantization": record | {"calibration_data": run.input("training_jsonl").version}})
