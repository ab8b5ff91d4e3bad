"""AutoModel on one GPU: our pretrain/automodel step on a ~1.1B Llama against a plain transformers loop, one run.

    python3 bench/run_automodel_gpu.py --out DIR [--steps 40] [--quick]

Each measurement runs in a fresh process, in this order:

1. baseline, eager and compiled: bench/gpu_baseline.py (bf16 weights, SDPA, fused AdamW).
2. platform: `step_function(pretrain/automodel)(run)` through bench/child.py: the recipe config built from the
   step's parameters, torchrun started by our launcher, the checkpoint published. Timed around the step call.
3. by hand: torchrun of AutoModel's own recipe module on the very recipe.yaml the step wrote (its own checkpoint
   directory). Timed around the process. Launch overhead = platform wall / by-hand wall - 1.

Model: TinyLlama-1.1B's architecture (22 layers, hidden 2048, GQA 32/4, vocab 32,000), random init, seq 2048,
micro batch 8, bf16 compute. Data: one uint16 shard of uniform random tokens and its blend.json. AutoModel
tokens/s is the median of the recipe's own per-step `tps` after the warm-up steps; MFU = tokens/s x (6N + 12 L H S)
/ 989 TFLOP/s (H100 dense bf16), for every run alike; the recipe's own `mfu` is kept too.
Writes DIR/automodel_gpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
LLAMA_1B = {  # TinyLlama-1.1B
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "vocab_size": 32000,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
PEAK_FLOPS = 989e12
SEQ, BATCH, SEED, LR = 2048, 8, 1234, 3e-4
WARMUP_STEPS = 5


def prepare(cache: Path, tokens: int) -> tuple[Path, Path]:
    """The model directory (config + the tiny tokenizer, no weights: random init) and a random-token shard."""
    from nemotron_assets.artifacts.binidx import BLEND_FILE, BinIdxWriter
    from nemotron_assets.fixtures import build_tiny_tokenizer

    model, data = cache / "llama-1.1b", cache / "random-tokens"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text(json.dumps(LLAMA_1B, indent=1))
    build_tiny_tokenizer(model)
    (data / "shards").mkdir(parents=True, exist_ok=True)
    writer = BinIdxWriter(data / "shards" / "shard_000000", np.uint16)
    document = 4 * SEQ
    ids = np.random.default_rng(SEED).integers(3, LLAMA_1B["vocab_size"], tokens // document * document)
    writer.add(ids, np.full(len(ids) // document, document))
    writer.close()
    (data / BLEND_FILE).write_text(json.dumps({"train": ["1", "shards/shard_000000"]}))
    return model, data


def parameter_count() -> int:
    c = LLAMA_1B
    hidden, kv = c["hidden_size"], c["hidden_size"] // c["num_attention_heads"] * c["num_key_value_heads"]
    layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * c["intermediate_size"] + 2 * hidden
    return c["num_hidden_layers"] * layer + 2 * c["vocab_size"] * hidden + hidden


def flops_per_token() -> float:
    c = LLAMA_1B
    return 6 * parameter_count() + 12 * c["num_hidden_layers"] * c["hidden_size"] * SEQ


def timed(command: list[str], log: Path, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run to completion; wall seconds and stdout (stderr goes to `log`)."""
    started = time.perf_counter()
    with log.open("w") as stderr:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=os.environ | (env or {}))
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{command[:5]} failed ({done.returncode}); see {log}:\n{log.read_text()[-3000:]}")
    return wall, done.stdout


def baseline(model: Path, data: Path, steps: int, compile_: bool, out: Path) -> dict:
    spec = {"model": str(model), "shard": str(data / "shards" / "shard_000000"), "seq_length": SEQ, "batch": BATCH}
    spec |= {"steps": steps, "warmup": WARMUP_STEPS, "lr": LR, "seed": SEED, "compile": compile_}
    name = f"baseline_{'compiled' if compile_ else 'eager'}"
    _, stdout = timed([sys.executable, str(BENCH / "gpu_baseline.py"), json.dumps(spec)], out / f"{name}.log")
    return json.loads(stdout.splitlines()[-1])


def recipe_steps(log: Path) -> dict:
    """Steady-state figures from the recipe's own per-step metrics (training.jsonl)."""
    steps = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    steady = steps[WARMUP_STEPS:]
    return {
        "tokens_per_second": statistics.median(s["tps"] for s in steady),
        "recipe_mfu": statistics.median(s["mfu"] for s in steady) if steady[0].get("mfu") is not None else None,
        "losses": [round(s["loss"], 4) for s in steps],
        "peak_memory_gib": max(s["mem"] for s in steps),
    }


def platform_run(model: Path, data: Path, steps: int, compile_: bool, out: Path, name: str) -> dict:
    """pretrain/automodel through our step function and launcher, on one GPU."""
    params = {
        "model.pretrained_model_name_or_path": str(model),
        "load_weights": False,
        "seq_length": SEQ,
        "precision": "bf16",
        "step_scheduler.global_batch_size": BATCH,
        "step_scheduler.local_batch_size": BATCH,
        "step_scheduler.max_steps": WARMUP_STEPS + steps,
        "step_scheduler.ckpt_every_steps": WARMUP_STEPS + steps,
        "step_scheduler.val_every_steps": 10**6,
        "optimizer.lr": LR,
        "seed": SEED,
        "compile": compile_,
    }
    work = out / name
    shutil.rmtree(work, ignore_errors=True)
    spec = {"mode": "step", "step": "pretrain/automodel", "inputs": {"binidx": str(data)}, "params": params}
    spec |= {"output_dir": str(work / "output"), "work_dir": str(work / "work"), "gpus": 1}
    _, stdout = timed([sys.executable, str(BENCH / "child.py"), json.dumps(spec)], out / f"{name}.log")
    result = json.loads(stdout.splitlines()[-1])
    steps = recipe_steps(work / "output" / "training_log.jsonl")
    for heavy in (work / "output", work / "work" / "checkpoints"):  # 4 GB a run; recipe.yaml stays for by_hand
        shutil.rmtree(heavy)
    timing = {key: result[key] for key in ("wall_s", "launched_s", "seal_s")}
    return timing | {"step_stats": result["stats"]} | steps


def by_hand(platform_dir: Path, out: Path, name: str) -> dict:
    """AutoModel's recipe module under torchrun on the recipe.yaml the platform run wrote, as a user would."""
    config = (platform_dir / "work" / "recipe.yaml").read_text().replace(str(platform_dir / "work"), str(out / name))
    checkpoints = out / name / "checkpoints"
    shutil.rmtree(out / name, ignore_errors=True)
    (out / name).mkdir(parents=True)
    (out / name / "recipe.yaml").write_text(config)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=1"]
    command += ["-m", "nemo_automodel.recipes.llm.train_ft", "--config", str(out / name / "recipe.yaml")]
    wall, _ = timed(command, out / f"{name}.log")
    result = {"wall_s": wall, "command": " ".join(command[1:])} | recipe_steps(checkpoints / "training.jsonl")
    shutil.rmtree(checkpoints)  # 4 GB a run
    return result


def plan(args: argparse.Namespace, model: Path, data: Path) -> list[tuple[str, Callable[[], dict]]]:
    """The measurements in run order: baselines, AutoModel eager, then an untimed by-hand warm-up (Megatron dataset
    helpers, bytecode and the inductor cache are built once for all) and platform/by-hand pairs, interleaved."""
    out, steps = args.out, args.steps
    runs = [
        ("baseline_eager", lambda: baseline(model, data, steps, False, out)),
        ("baseline_compiled", lambda: baseline(model, data, steps, True, out)),
        ("platform_eager", lambda: platform_run(model, data, steps, False, out, "platform_eager")),
        ("platform_compiled", lambda: platform_run(model, data, steps, True, out, "platform_compiled")),
        ("warmup", lambda: by_hand(out / "platform_compiled", out, "warmup")),
    ]
    for repeat in range(args.repeats):
        runs.append(
            ("platform_compiled", lambda r=repeat: platform_run(model, data, steps, True, out, f"platform_{r}"))
        )
        runs.append(("by_hand_compiled", lambda r=repeat: by_hand(out / f"platform_{r}", out, f"by_hand_{r}")))
    return [(name, measure) for name, measure in runs if not args.only or name in args.only]


def summarise(results: dict[str, list[dict]]) -> dict[str, float]:
    """Ratios of medians: AutoModel (compiled, timed repeats) against the baselines, and the launch overhead."""
    tps = {name: statistics.median(r["tokens_per_second"] for r in runs) for name, runs in results.items()}
    summary = {}
    for baseline_name in ("baseline_compiled", "baseline_eager"):
        if {baseline_name, "platform_compiled"} <= tps.keys():
            summary[f"automodel_compiled_vs_{baseline_name}"] = tps["platform_compiled"] / tps[baseline_name]
    if {"platform_eager", "baseline_eager"} <= tps.keys():
        summary["automodel_eager_vs_baseline_eager"] = tps["platform_eager"] / tps["baseline_eager"]
    platform = [r for name in ("platform_eager", "platform_compiled") for r in results.get(name, [])]
    if platform:
        outside = statistics.median(r["wall_s"] / r["launched_s"] - 1 for r in platform)
        summary["platform_time_outside_the_recipe"] = outside
        summary["seal_vs_recipe_time"] = statistics.median(r["seal_s"] / r["launched_s"] for r in platform)
    if {"platform_compiled", "by_hand_compiled"} <= results.keys():
        pairs = results["platform_compiled"][-len(results["by_hand_compiled"]) :]  # the pairs after the warm-up
        by_hand_runs = results["by_hand_compiled"]
        for key, name in (("tokens_per_second", "recipe_tokens_per_second"), ("wall_s", "wall")):
            ratio = statistics.median(r[key] for r in pairs) / statistics.median(r[key] for r in by_hand_runs)
            summary[f"{name}_platform_vs_by_hand"] = ratio
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=30, help="timed steps after the warm-up steps")
    parser.add_argument("--repeats", type=int, default=2, help="platform/by-hand pairs for the launch overhead")
    parser.add_argument("--only", nargs="*", help="run only these measurements")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model, data = prepare(args.out / "cache", tokens=(WARMUP_STEPS + args.steps) * BATCH * SEQ * 2)

    import torch

    results: dict[str, list[dict]] = {}
    for name, measure in plan(args, model, data):
        result = measure()
        print(name, json.dumps(result)[:300], flush=True)
        if name != "warmup":
            results.setdefault(name, []).append(result)
    for result in (r for runs in results.values() for r in runs):
        result["mfu"] = result["tokens_per_second"] * flops_per_token() / PEAK_FLOPS
    summary = summarise(results)
    document = {
        "machine": {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "host": platform.node()},
        "settings": {"model": LLAMA_1B, "seq_length": SEQ, "micro_batch": BATCH, "timed_steps": args.steps},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "results": results,
        "summary": summary,
    }
    (args.out / "automodel_gpu.json").write_text(json.dumps(document, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
