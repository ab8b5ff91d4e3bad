"""optimize/modelopt/quantize and distill for real on a GPU, through their step functions (the GPU image has no
Dagster), each Megatron checkpoint checked by the checkpoint_megatron contract.

Quantize: FP8 for Hopper and NVFP4 for Blackwell, both calibrated on the shipped chat data; the record says which
weight dtypes the hf/ export holds and how the held-out NLL moved. NVFP4 quantizes inputs in blocks of 16, which the
tiny Llama's intermediate width (172) does not divide (the step refuses it), so NVFP4 runs on the same architecture
with the width rounded up to 192 and random weights.
Distill (tiny preset): the model teaches its one-layer cut (its first decoder layer only, its tokenizer); the record
holds the student's held-out NLL before, after and after reloading the saved checkpoint, and the hf/ export's logit
difference from the Megatron student.

    python3 bench/verify_modelopt_gpu.py --model DIR --out DIR     # writes DIR/modelopt_gpu_quantize.json
    python3 bench/verify_modelopt_gpu.py --model DIR --out DIR --tasks distill    # distill only (runs on CPU too)
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
from collections import Counter
from pathlib import Path

import torch
from verify_megatron_gpu import stage

DATA = Path(__file__).resolve().parents[1] / "nemotron_assets" / "fixtures" / "data" / "tiny_chat.jsonl"
TARGETS = {"fp8": "H100", "nvfp4": "B200"}  # the format `auto` picks for each deployment GPU


def weight_dtypes(export: Path) -> dict[str, int]:
    """How many tensors of each dtype the export's safetensors hold."""
    from safetensors import safe_open

    counts: Counter[str] = Counter()
    for file in export.glob("*.safetensors"):
        with safe_open(file, "pt") as tensors:
            counts.update(str(tensors.get_slice(name).get_dtype()) for name in tensors.keys())  # noqa: SIM118
    return dict(counts)


def block_compatible(model: Path, out: Path, multiple: int = 64) -> Path:
    """The model itself when its intermediate width divides `multiple`, else the same architecture rounded up to it
    (random weights, seed 0), saved with the model's tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(model)
    if config.intermediate_size % multiple == 0:
        return model
    config.intermediate_size = -(-config.intermediate_size // multiple) * multiple
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(model).save_pretrained(out)
    return out


def one_layer_student(model: Path, out: Path) -> Path:
    """The model's first decoder layer only (a pruned student sharing its tokenizer), saved with the tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    student = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    student.model.layers = student.model.layers[:1]
    student.config.num_hidden_layers = 1
    student.save_pretrained(out)
    AutoTokenizer.from_pretrained(model).save_pretrained(out)
    return out


def distill(model: Path, out: Path, gpus: int) -> dict:
    """The tiny preset's distillation of the model into its one-layer cut; the NLL figures and the contract."""
    student = one_layer_student(model, out / "student")
    inputs = {"checkpoint_hf": student, "training_jsonl": DATA}
    record = stage("optimize/modelopt/distill", "tiny", {"args.teacher_hf_path": str(model)}, inputs, out, gpus)
    figures = ("student_nll_before", "student_nll_after", "student_nll_restored", "teacher_nll")
    return {name: record["stats"].get(name) for name in figures} | record | {"student": str(student)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tasks", nargs="+", choices=[*TARGETS, "distill"], default=[*TARGETS, "distill"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    result: dict = {"device": gpu or "cpu", "torch": torch.__version__, "python": platform.python_version()}
    recipes = {recipe: target for recipe, target in TARGETS.items() if recipe in args.tasks}
    args.out.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every task: a call cut short keeps what finished
        (args.out / "modelopt_gpu_quantize.json").write_text(json.dumps(result, indent=2, default=str))

    models = {
        "fp8": args.model.resolve(),
        "nvfp4": block_compatible(args.model.resolve(), args.out.resolve() / "model") if "nvfp4" in recipes else None,
    }
    for recipe, target in recipes.items():
        inputs = {"checkpoint_hf": models[recipe], "training_jsonl": DATA}
        params = {"deploy_gpu": target, "args.export_quant_cfg": "auto"}
        record = stage(
            "optimize/modelopt/quantize", "tiny", params, inputs, args.out.resolve() / recipe, int(bool(gpu))
        )
        result[recipe] = record | {
            "model": str(models[recipe]),
            "weight_dtypes": weight_dtypes(Path(record["path"]) / "hf"),
        }
        save()
    if "distill" in args.tasks:
        result["distill"] = distill(args.model.resolve(), args.out.resolve() / "distill", int(bool(gpu)))
        save()


if __name__ == "__main__":
    main()
