"""optimize/modelopt/quantize for real on a GPU, through its step function (the GPU image has no Dagster), each export
checked by the checkpoint_hf contract: FP8 for Hopper and NVFP4 for Blackwell, both calibrated on the shipped chat
data; the record says which weight dtypes the export holds and how the held-out NLL moved. NVFP4 quantizes inputs in
blocks of 16, which the tiny Llama's intermediate width (172) does not divide (the step refuses it), so NVFP4 runs on
the same architecture with the width rounded up to 192 and random weights.

    python3 bench/verify_modelopt_gpu.py --model DIR --out DIR     # writes DIR/modelopt_gpu_quantize.json
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    result: dict = {"device": gpu or "cpu", "torch": torch.__version__, "python": platform.python_version()}
    models = {
        "fp8": args.model.resolve(),
        "nvfp4": block_compatible(args.model.resolve(), args.out.resolve() / "model"),
    }
    for recipe, target in TARGETS.items():
        inputs = {"checkpoint_hf": models[recipe], "training_jsonl": DATA}
        params = {"deploy_gpu": target, "args.export_quant_cfg": "auto"}
        record = stage(
            "optimize/modelopt/quantize", "tiny", params, inputs, args.out.resolve() / recipe, int(bool(gpu))
        )
        result[recipe] = record | {
            "model": str(models[recipe]),
            "weight_dtypes": weight_dtypes(Path(record["path"]) / "hf"),
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "modelopt_gpu_quantize.json").write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
