"""Megatron-Bridge for real on one GPU, step after step through the step functions (as the stage runner calls them;
the GPU image has no Dagster), each output checked by its artifact contract: the tiny Llama converted to a Megatron checkpoint
(convert/hf_to_megatron), fine-tuned from it on packed Parquet made by data_prep/sft_packing
(sft/megatron_bridge, full SFT, torchrun on 1 GPU), and the trained iter_* checkpoint exported back to HF
(convert/megatron_to_hf); the export must load in transformers on the GPU and give finite logits.

    python3 bench/verify_megatron_gpu.py --model DIR --packed DIR --out DIR     # writes DIR/megatron_gpu_sft.json

--model: an HF Llama directory with tokenizer and chat template; --packed: a published packed_parquet artifact
made with that tokenizer at pack_size 2048 (provenance included, so the tokenizer check runs).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import torch

from nemotron_assets.artifacts import validate
from nemotron_assets.catalog import CATALOG
from nemotron_assets.steps import InputArtifact, StepRun, step_function

SFT = {
    "seq_length": 2048,
    "dataset.packed_sequence_specs.packed_sequence_size": 2048,
    "peft": "null",
    "model.tensor_model_parallel_size": 1,
    "model.pipeline_model_parallel_size": 1,
    "model.context_parallel_size": 1,
    "model.expert_model_parallel_size": 1,
    "train.micro_batch_size": 1,
    "train.global_batch_size": 8,
    "train.train_iters": 30,
    "checkpoint.save_interval": 15,
}


def stage(step: str, preset: str, params: dict, inputs: dict[str, Path], out: Path, gpus: int) -> dict:
    """One step through its step function (as the stage runner calls it), its output checked by its contract."""
    spec = CATALOG.step(step)
    name = step.split("/")[0] + "_" + step.split("/")[1]
    artifacts = {port: InputArtifact(path.name, port, path, path.name) for port, path in inputs.items()}
    output, work = out / name / "output", out / name / "work"
    output.mkdir(parents=True)
    run = StepRun(spec, spec.preset_values(preset) | params, artifacts, output, work, gpus, logging.getLogger(step))
    started = time.perf_counter()
    result = step_function(spec)(run)
    seconds = round(time.perf_counter() - started, 1)
    record = {
        "seconds": seconds,
        "path": str(output),
        "stats": result.stats,
        "contract": validate(output, spec.primary_output),
    }
    print(json.dumps({step: record}), flush=True)
    return record


def loads_on_the_gpu(path: Path) -> dict:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda().eval()
    with torch.no_grad():
        logits = model(torch.arange(1, 65, device="cuda").unsqueeze(0)).logits
    return {"finite_logits": bool(torch.isfinite(logits).all()), "logits_shape": list(logits.shape)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--packed", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    model, packed, out = args.model.resolve(), args.packed.resolve(), args.out.resolve()
    result: dict = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    result["hf_to_megatron"] = stage("convert/hf_to_megatron", "tiny", {}, {"checkpoint_hf": model}, out, 0)
    mcore = Path(result["hf_to_megatron"]["path"])
    inputs = {"packed_parquet": packed, "checkpoint_megatron": mcore}
    result["sft"] = stage("sft/megatron_bridge", "default", SFT | {"hf_model_path": str(model)}, inputs, out, 1)
    sft = Path(result["sft"]["path"])
    export = {"hf_model_id": str(model)}
    result["megatron_to_hf"] = stage("convert/megatron_to_hf", "tiny", export, {"checkpoint_megatron": sft}, out, 0)
    result["export_on_gpu"] = loads_on_the_gpu(Path(result["megatron_to_hf"]["path"]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "megatron_gpu_sft.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result["export_on_gpu"]))


if __name__ == "__main__":
    main()
