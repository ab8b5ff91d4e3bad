"""optimize/modelopt/prune: ModelOpt Minitron structured pruning of an HF model through Megatron-Bridge, with
ModelOpt's own example script (prune_minitron.py) in the Megatron-Bridge container.

Minitron (`mtp.prune(mode="mcore_minitron")`) prunes Megatron-Core models only, one process per pipeline stage
(world size = args.pp_size), so the step needs that many GPUs. The checks that come before any GPU is asked for: a
target parameter count (NAS search) or an exact export config, exactly one; a target below the model's size; layers
that split over the pipeline stages. The pruned HF checkpoint is written straight into the artifact.
"""

from __future__ import annotations

import json

from nemotron_assets.artifacts.checkpoints import validate_checkpoint_hf
from nemotron_assets.steps import StepResult, StepRun

PASSED = {  # the args handed to the script under their own flag names
    "pp_size",
    "num_layers_in_first_pipeline_stage",
    "num_layers_in_last_pipeline_stage",
    "calib_dataset_name",
    "calib_num_samples",
    "seq_length",
    "prune_target_params",
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
    layers = json.loads((source / "config.json").read_text())["num_hidden_layers"]
    pp, uneven = args.pp_size, args.num_layers_in_first_pipeline_stage is not None
    if layers % pp and not uneven:
        raise run.error("invalid_parallel_divisibility", f"{layers} layers do not split over pp_size {pp}")
    if run.gpus < pp:
        raise run.error("insufficient_hardware", f"pp_size {pp} needs {pp} GPUs on a node; this run has {run.gpus}")
    return {"layers": layers, "parameters": size}


def prune_arguments(run: StepRun) -> list[str]:
    """prune_minitron.py's flags: the consumed model into the artifact directory, as the job sees them."""
    args = run.p.args
    model, output = (run.paths.to_job(path) for path in (run.input("checkpoint_hf").path, run.output_dir))
    flags = [f"--hf_model_name_or_path={model}", f"--output_hf_path={output}"]
    flags += [f"--{name}={value}" for name, value in args.model_dump(include=PASSED, exclude_none=True).items()]
    if args.prune_export_config:
        flags.append(f"--prune_export_config={json.dumps(args.prune_export_config)}")
    if args.hparams_to_skip:
        flags += ["--hparams_to_skip", *args.hparams_to_skip]
    return [*flags, *run.p.extra_args]


def run(run: StepRun) -> StepResult:
    source = check(run)
    run.launch_job(
        "modelopt",
        {"task": "prune", "argv": prune_arguments(run)},
        nproc_per_node=run.p.args.pp_size,
        torchrun=True,
    )
    pruned = validate_checkpoint_hf(run.output_dir)
    stats = {"parameters_before": source["parameters"], "parameters_after": pruned["parameters"]}
    return StepResult(stats | {"kept": pruned["parameters"] / source["parameters"]})
