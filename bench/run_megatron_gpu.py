"""sft/megatron_bridge throughput on one GPU against a plain transformers loop on the same model, in the same run.

A Llama (hidden --hidden, --layers layers, the tokenizer of --tokenizer-model) is saved with random bf16 weights,
imported by convert/hf_to_megatron and fine-tuned by sft/megatron_bridge on the packed bins (--packed, made at
2048 with that tokenizer): global batch 8, --steps iterations, one save at the end. The baseline is
bench/gpu_baseline.py (bf16, SDPA, fused AdamW, eager and torch.compile) on the same model, over windows of the
same tokens (the bins' input_ids written as a uint16 shard), sequence 2048, batch 8.

    python3 bench/run_megatron_gpu.py --tokenizer-model DIR --packed DIR --out DIR   # writes DIR/megatron_gpu_throughput.json

Megatron tokens/s counts the steps after the first (bins x 2048 per step, and the bins' real tokens); the
baseline's counts its timed steps after 5 warm-up steps.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from verify_megatron_gpu import SFT, stage

BENCH = Path(__file__).resolve().parent
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def make_model(tokenizer_model: Path, hidden: int, layers: int, out: Path) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tokenizer_model)
    heads = hidden // 64
    config.update(
        {
            "hidden_size": hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": heads // 2,
            "head_dim": 64,
            "intermediate_size": int(hidden * 2.75),
            "max_position_embeddings": 2048,
        }
    )
    torch.manual_seed(0)
    model = out / "model"
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(model)
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_model / name, model / name)
    return model


def token_shard(packed: Path, out: Path) -> str:
    """The bins' tokens, concatenated, as the uint16 shard gpu_baseline.py reads."""
    ids = np.concatenate(
        [np.asarray(row, np.uint16) for f in sorted((packed / "splits" / "train").glob("*.parquet"))
         for row in pq.read_table(f, columns=["input_ids"])["input_ids"].to_pylist()]
    )  # fmt: skip
    prefix = out / "tokens"
    ids.tofile(f"{prefix}.bin")
    return str(prefix)


def baseline(model: Path, shard: str, steps: int, compile_: bool) -> dict:
    spec = {"model": str(model), "shard": shard, "seq_length": 2048, "batch": 8, "steps": steps, "warmup": 5}
    spec |= {"lr": 1e-5, "seed": 1234, "compile": compile_}
    done = subprocess.run(
        [sys.executable, str(BENCH / "gpu_baseline.py"), json.dumps(spec)], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokenizer-model", type=Path, required=True)
    parser.add_argument("--packed", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    model = make_model(args.tokenizer_model.resolve(), args.hidden, args.layers, out)
    result: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "model": {}}
    result["hf_to_megatron"] = stage("convert/hf_to_megatron", "tiny", {}, {"checkpoint_hf": model}, out, 0)
    result["model"]["parameters"] = result["hf_to_megatron"]["stats"]["parameters"]
    params = SFT | {
        "hf_model_path": str(model),
        "train.train_iters": args.steps,
        "checkpoint.save_interval": args.steps,
    }
    inputs = {"packed_parquet": args.packed.resolve(), "checkpoint_megatron": Path(result["hf_to_megatron"]["path"])}
    result["sft"] = stage("sft/megatron_bridge", "default", params, inputs, out, 1)
    shard = token_shard(args.packed.resolve(), out)
    result["baseline_eager"] = baseline(model, shard, args.steps, False)
    result["baseline_compiled"] = baseline(model, shard, args.steps, True)
    sft = result["sft"]["stats"]
    nominal = sft["tokens_per_second"] / sft["tokens_per_step"] * 8 * 2048
    result["summary"] = {
        "megatron_bridge_tokens_per_s_real": sft["tokens_per_second"],
        "megatron_bridge_tokens_per_s_bins_x_2048": round(nominal, 1),
        "baseline_eager_tokens_per_s": round(result["baseline_eager"]["tokens_per_second"], 1),
        "baseline_compiled_tokens_per_s": round(result["baseline_compiled"]["tokens_per_second"], 1),
        "ratio_vs_eager": round(nominal / result["baseline_eager"]["tokens_per_second"], 3),
        "ratio_vs_compiled": round(nominal / result["baseline_compiled"]["tokens_per_second"], 3),
    }
    (out / "megatron_gpu_throughput.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result["summary"]))


if __name__ == "__main__":
    main()
