"""optimize/modelopt/prune: ModelOpt Minitron structured pruning of an HF model on Megatron-Core, calibrated on
rows of its training data, written as a pruned HF checkpoint.

Our own job (`prune` in the modelopt job backend), not ModelOpt's example script: the consumed HF model is
imported into Megatron-Core through Megatron-Bridge's AutoBridge, `mtp.prune(mode="mcore_minitron")` ranks heads,
MLP neurons, hidden channels and layers by their activations on the first `args.calib_num_samples` rows of the
consumed training_jsonl and prunes either to the exact `args.prune_export_config` or, by its NAS search, to at most
`args.prune_target_params` parameters (the top `args.top_k` candidates scored by the mean token NLL on the next
`holdout_size` rows), and the bridge exports the pruned model to HF in the artifact directory. Minitron prunes on
GPUs, one process per pipeline stage (torchrun over `args.pp_size`), and needs Megatron-Core >= 0.17.

The checks that come before any GPU is asked for: a target parameter count or an exact export config, exactly one; a
target below the model's size; an export config of dimensions Minitron prunes, each no larger than the model's;
layers that split over the pipeline stages; enough GPUs; calibration data with rows left to measure on.
"""

from __future__ import annotations

import json
from typing import Any

from nemotron_assets.artifacts.checkpoints import validate_checkpoint_hf
from nemotron_assets.steps import StepResult, StepRun
from nemotron_assets.steps.modelopt.common import training_texts

# Minitron's prunable dimensions (ModelOpt's SUPPORTED_HPARAMS); the dense ones with the HF config key they shrink
MINITRON_HPARAMS = {
    "hidden_size": "hidden_size",
    "ffn_hidden_size": "intermediate_size",
    "num_attention_heads": "num_attention_heads",
    "num_layers": "num_hidden_layers",
    "mamba_num_heads": None,
    "mamba_head_dim": None,
    "moe_ffn_hidden_size": None,
    "moe_shared_expert_intermediate_size": None,
    "num_moe_experts": None,
}


def check(run: StepRun) -> dict[str, int]:
    """The named errors a pruning request can have; returns the source model's layer and parameter counts."""
    args = run.p.args
    target, export = args.prune_target_params, args.prune_export_config
    if target is not None and export:
        raise run.error("target_and_export_config_both_set", "args.prune_target_params and export config: both are set")
    if target is None and not export:
        raise run.error("prune_target_missing", "args.prune_target_params and export config: neither is set")
    source = run.input("checkpoint_hf").path
    size = validate_checkpoint_hf(source)["parameters"]
    if target is not None and target >= size:
        raise run.error("target_not_below_model_size", f"target {target:.3g} parameters, the model has {size:.3g}")
    config = json.loads((source / "config.json").read_text())
    check_dimensions(run, config)
    layers = config["num_hidden_layers"]
    pp, uneven = args.pp_size, args.num_layers_in_first_pipeline_stage is not None
    if layers % pp and not uneven:
        raise run.error("invalid_parallel_divisibility", f"{layers} layers do not split over pp_size {pp}")
    if run.gpus < pp:
        raise run.error("insufficient_hardware", f"pp_size {pp} needs {pp} GPUs on a node; this run has {run.gpus}")
    return {"layers": layers, "parameters": size}


def check_dimensions(run: StepRun, config: dict[str, Any]) -> None:
    """The export config and the skipped dimensions name Minitron's dimensions; an exact shape is positive, no
    larger than the model's, and keeps whole attention groups (Minitron prunes heads within each KV group)."""
    args = run.p.args
    named = {**(args.prune_export_config or {}), **dict.fromkeys(args.hparams_to_skip or [], 1)}
    unknown = sorted(set(named) - set(MINITRON_HPARAMS))
    if unknown:
        raise run.error("invalid_prune_config", f"{unknown} are not Minitron dimensions ({sorted(MINITRON_HPARAMS)})")
    for name, value in (args.prune_export_config or {}).items():
        largest = config.get(MINITRON_HPARAMS[name] or "", value)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= largest:
            detail = f"{name} = {value!r}: a whole number from 1 to the model's {largest}"
            raise run.error("invalid_prune_config", detail)
    heads = (args.prune_export_config or {}).get("num_attention_heads")
    groups = config.get("num_key_value_heads") or config["num_attention_heads"]
    if heads and heads % groups:
        detail = f"num_attention_heads {heads} is not a multiple of the {groups} KV groups"
        raise run.error("invalid_prune_config", detail)


def calibration(run: StepRun) -> tuple[list[str], list[str]]:
    """(calibration texts, held-out texts) from the consumed training_jsonl."""
    from transformers import AutoTokenizer

    if "training_jsonl" not in run.inputs:
        raise run.error("calibration_data_missing", "no training_jsonl input to calibrate on")
    calib = run.p.args.calib_num_samples
    tokenizer = AutoTokenizer.from_pretrained(run.input("checkpoint_hf").path)
    texts = training_texts(run, tokenizer, calib + run.p.holdout_size)
    if len(texts) <= calib:
        data = run.input("training_jsonl").name
        detail = f"{data} holds {len(texts)} rows; args.calib_num_samples {calib} and at least one held-out row needed"
        raise run.error("not_enough_calibration_rows", detail)
    return texts[:calib], texts[calib:]


def prune_job(run: StepRun, calib: list[str], holdout: list[str]) -> dict[str, Any]:
    """The `prune` task's arguments (paths as the job sees them)."""
    args = run.p.args
    return {
        "model": run.input("checkpoint_hf").path,
        "output": run.output_dir,
        "calibration": calib,
        "holdout": holdout,
        "max_tokens": args.seq_length,
        "pp": args.pp_size,
        "num_layers_in_first_pipeline_stage": args.num_layers_in_first_pipeline_stage,
        "num_layers_in_last_pipeline_stage": args.num_layers_in_last_pipeline_stage,
        "export_config": args.prune_export_config or None,
        "target_params": args.prune_target_params,
        "hparams_to_skip": list(args.hparams_to_skip or []),
        "top_k": args.top_k,
    }


def run(run: StepRun) -> StepResult:
    source = check(run)
    calib, holdout = calibration(run)
    report = run.work_dir / "result.json"
    report.unlink(missing_ok=True)
    pp = run.p.args.pp_size
    run.launch_job("modelopt", {"task": "prune"} | prune_job(run, calib, holdout), nproc_per_node=pp, torchrun=True)
    result = json.loads(report.read_text())
    pruned = validate_checkpoint_hf(run.output_dir)
    stats = result | {
        "parameters_before": source["parameters"],
        "parameters_after": pruned["parameters"],
        "kept": pruned["parameters"] / source["parameters"],
        "target_params": run.p.args.prune_target_params,
    }
    record = {"pruned_shape": result["pruned_shape"], "calibration_data": run.input("training_jsonl").version}
    return StepResult(stats, {"pruning": record})
