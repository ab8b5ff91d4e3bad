"""Megatron-Bridge on one GPU against a compiled transformers loop over the same tokens, in one call (issue 16).

    python3 bench/run_megatron_gpu.py --out DIR [--steps 30] [--only NAME ...] [--profile START:END]
    # writes DIR/megatron_gpu_throughput.json after every run, in --only's order; --profile traces those steps of
    # sft_wide_bins (bench/trace_summary.py)

Model: TinyLlama-1.1B's architecture (run_automodel_gpu.LLAMA_1B) with the tiny tokenizer, random bf16 weights saved
once. Data: a chat corpus (bench/corpus.py) packed at 2048 by data_prep/sft_packing, and the random-token bin/idx
shard of run_automodel_gpu. Each measurement runs in a fresh process, in this order (or in --only's):

- attention: bench/verify_packed_attention_gpu.py, the varlen kernel against the dense-mask path (same loss).
- baseline_compiled: bench/gpu_baseline.py (bf16, SDPA, fused AdamW, torch.compile) over the SFT bins' tokens
  concatenated (real tokens only), sequence 2048, batch 8; timed after 5 warm-up steps.
- sft: sft/megatron_bridge through its step function (our launcher starts torchrun), the HF weights imported,
  global batch 8 bins of 2048 at micro batch 1; tokens/s counts the bins' real tokens over the steps after the first.
- sft_wide_bins: the same, with bins of 8 x 2048 tokens (each conversation still cut at 2048, RoPE positions per
  conversation) at global batch 1: a step's tokens in one micro batch.
- pretrain: pretrain/megatron_bridge on the bin/idx shard, random init, micro batch = global batch = 8 x 2048.
- automodel: pretrain/automodel through its step function, compile on (run_automodel_gpu.platform_run).

MFU = tokens/s x (6N + 12 L H S) / 989 TFLOP/s (H100/H200 dense bf16), the same for every run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from corpus import chat_corpus
from run_automodel_gpu import BATCH, PEAK_FLOPS, SEQ, baseline, flops_per_token, platform_run, prepare, timed
from trace_summary import summarize
from verify_megatron_gpu import SFT, stage

from nemotron_assets.steps.launch import scoped_environ
from nemotron_assets.steps.megatron_bridge.config import PROFILE_STEPS

BENCH = Path(__file__).resolve().parent
MEGATRON = {
    "model.tensor_model_parallel_size": 1,
    "model.pipeline_model_parallel_size": 1,
    "model.context_parallel_size": 1,
    "train.global_batch_size": BATCH,
    "seq_length": SEQ,
}


def weights(model: Path) -> None:
    """Random bf16 weights beside the config, for the step that imports HF weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model), dtype=torch.bfloat16).save_pretrained(model)


def packed_bins(model: Path, out: Path, megabytes: float, pack_size: int = SEQ) -> Path:
    """A chat corpus packed with the model's tokenizer through data_prep/sft_packing (every bin trains): bins of
    `pack_size`, each conversation cut at SEQ tokens."""
    corpus = Path(chat_corpus(megabytes)["path"])
    params = {"tokenizer": str(model), "pack_size": pack_size, "max_doc_tokens": SEQ, "chat_template": "chatml"}
    params |= {"num_shards": 1, "train_ratio": 1.0, "valid_ratio": 0.0, "test_ratio": 0.0}
    return Path(stage("data_prep/sft_packing", "default", params, {"training_jsonl": corpus}, out, 0)["path"])


def bins_shard(packed: Path, out: Path) -> Path:
    """The bins' real tokens, concatenated, as the uint16 shard the baseline reads (out/bins/shards/shard_000000)."""
    ids = np.concatenate(
        [np.asarray(row, np.uint16) for f in sorted((packed / "splits" / "train").glob("*.parquet"))
         for row in pq.read_table(f, columns=["input_ids"])["input_ids"].to_pylist()]
    )  # fmt: skip
    (out / "bins" / "shards").mkdir(parents=True, exist_ok=True)
    ids.tofile(out / "bins" / "shards" / "shard_000000.bin")
    return out / "bins"


def megatron(step: str, params: dict, inputs: dict[str, Path], out: Path, name: str, profile: str = "") -> dict:
    """One Megatron-Bridge step; with `profile` ("START:END") PyTorch's profiler traces those steps (the job's
    NEMOTRON_PROFILE_STEPS), summarized by trace_summary."""
    started = time.perf_counter()
    with scoped_environ({PROFILE_STEPS: profile} if profile else {}):
        record = stage(step, "default", MEGATRON | params, inputs, out / name, 1)
    stats = record["stats"]
    traces = sorted((out / name).rglob("*.pt.trace.json*"))
    return {
        "wall_s": round(time.perf_counter() - started, 1),
        "tokens_per_second": stats["tokens_per_second"],
        "losses": stats.get("losses"),
        "stats": {k: v for k, v in stats.items() if k != "losses"},
        "contract": record["contract"],
    } | ({"profile": summarize(traces[-1]) | {"steps": profile}} if traces else {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--chat-mb", type=float, default=6.0)
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--profile", default="", help="START:END: profile these steps of sft_wide_bins")
    args = parser.parse_args()
    out = args.out.resolve()
    for directory in (out, out / "wide"):
        directory.mkdir(parents=True, exist_ok=True)
    model, shard = prepare(out / "cache", tokens=(args.steps + 5) * BATCH * SEQ * 2)
    weights(model)
    packed = packed_bins(model, out, args.chat_mb)
    bins_tokens = bins_shard(packed, out)
    sft = SFT | {"hf_model_path": str(model), "train.train_iters": args.steps, "checkpoint.save_interval": args.steps}
    pretrain = {
        "hf_model_path": str(model),
        "load_hf_weights": False,
        "train.micro_batch_size": BATCH,
        "train.train_iters": args.steps,
        "checkpoint.save_interval": args.steps,
        "optimizer.lr": 3e-4,
    }
    wide = SEQ * BATCH  # one bin holds a step's tokens: eight conversations of at most SEQ, one micro batch
    sft_wide = sft | {"seq_length": wide, "dataset.packed_sequence_specs.packed_sequence_size": wide}
    sft_wide |= {"train.global_batch_size": 1}
    runs = {
        "attention": lambda: json.loads(
            timed([sys.executable, str(BENCH / "verify_packed_attention_gpu.py"), str(packed)], out / "attention.log")[
                1
            ].splitlines()[-1]
        ),
        "baseline_compiled": lambda: baseline(model, bins_tokens, args.steps, True, out),
        "sft": lambda: megatron("sft/megatron_bridge", sft, {"packed_parquet": packed}, out, "sft"),
        "sft_wide_bins": lambda: megatron(
            "sft/megatron_bridge",
            sft_wide,
            {"packed_parquet": packed_bins(model, out / "wide", args.chat_mb, wide)},
            out,
            "wide",
            args.profile,
        ),
        "pretrain": lambda: megatron("pretrain/megatron_bridge", pretrain, {"binidx": shard}, out, "pretrain"),
        "automodel": lambda: platform_run(model, shard, args.steps, True, out, "automodel"),
    }
    results: dict[str, dict] = {}
    for name in args.only or runs:  # --only's order: the runs a call must not lose go first
        measure = runs[name]
        try:
            results[name] = measure()
        except BaseException as e:  # keep what the other runs measured
            results[name] = {"error": f"{type(e).__name__}: {str(e)[-2000:]}"}
        if results[name].get("tokens_per_second"):
            results[name]["mfu"] = round(results[name]["tokens_per_second"] * flops_per_token() / PEAK_FLOPS, 4)
        print(name, json.dumps(results[name])[:400], flush=True)
        write(out, args, results)  # after every run: a call cut short keeps what it measured


def write(out: Path, args: argparse.Namespace, results: dict[str, dict]) -> None:
    reference = results.get("baseline_compiled", {}).get("tokens_per_second")
    summary = {
        f"{name}_vs_baseline_compiled": round(r["tokens_per_second"] / reference, 3)
        for name, r in results.items()
        if reference and name != "baseline_compiled" and r.get("tokens_per_second")
    }
    document = {
        "machine": {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "host": platform.node()},
        "settings": {"seq_length": SEQ, "global_batch": BATCH, "steps": args.steps, "chat_mb": args.chat_mb},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "results": results,
        "summary": summary,
    }
    (out / "megatron_gpu_throughput.json").write_text(json.dumps(document, indent=1))


if __name__ == "__main__":
    main()
