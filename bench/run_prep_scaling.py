"""Data-prep scaling over worker processes, against Megatron-LM's tools/preprocess_data.py (issue 17).

    python3 bench/run_prep_scaling.py --tokenizer DIR --megatron DIR [--only gen pretrain sft megatron]
        [--workers 1 2 4 8 16] [--plain-mb 1000] [--chat-mb 200] [--parts 16] [--out FILE]

* gen: a plain corpus and a chat corpus (bench/corpus.py) generated in --parts processes, seeded per part.
* pretrain / sft: data_prep/pretrain_prep on the plain corpus and data_prep/sft_packing on the chat corpus through
  the step functions (bench/child.py: a fresh process per run, the timer around the step call only), with the
  profile's cpus = N for each N of --workers and the same SHARDS shards, so every N makes the same artifact
  (checked by its digest). tokens/s = the step's tokens / seconds; efficiency at N = tokens/s at N / (N x at 1).
* megatron: Megatron-LM's tools/preprocess_data.py (from a checkout at --megatron, run as it is) with
  --megatron-workers on the plain corpus and the same tokenizer (HuggingFaceTokenizer, --append-eod); tokens are
  read from its .idx, seconds are the whole command's wall time (its start-up included, as ours is not: ~1 s).

Results merge into --out (bench/results/prep_scaling.json), written again after every run, so the parts can run in
separate calls and a call stopped at its time limit keeps the runs it finished.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import corpus  # noqa: E402

SHARDS = 64
STEPS = {
    "pretrain": ("data_prep/pretrain_prep", "filtered_jsonl", {"valid_shards": 1, "test_shards": 1}),
    "sft": ("data_prep/sft_packing", "training_jsonl", {"pack_size": 4096, "algorithm": "first_fit_decreasing"}),
}


def corpora(args: argparse.Namespace) -> dict[str, dict]:
    started = time.perf_counter()
    metas = {
        "pretrain": corpus.plain_corpus(args.plain_mb, parts=args.parts),
        "sft": corpus.chat_corpus(args.chat_mb, parts=args.parts),
    }
    return {"seconds": round(time.perf_counter() - started, 1)} | {
        name: {k: meta[k] for k in ("path", "rows", "mb", "parts")} for name, meta in metas.items()
    }


def run_step(name: str, source: str, tokenizer: str, workers: int, scratch: Path) -> dict:
    step, port, params = STEPS[name]
    spec = {
        "mode": "step",
        "step": step,
        "inputs": {port: source},
        "output_dir": str(scratch / f"{name}_{workers}"),
        "params": params | {"tokenizer": tokenizer, "num_shards": SHARDS},
        "cpus": workers,
    }
    cores = ["taskset", "-c", f"0-{workers - 1}"]  # N cores for N workers: the tokenizer's own threads included
    done = subprocess.run(
        [*cores, sys.executable, str(BENCH / "child.py"), json.dumps(spec)], capture_output=True, text=True, cwd=ROOT
    )
    subprocess.run(["rm", "-rf", spec["output_dir"]], check=True)
    if done.returncode != 0:
        raise RuntimeError(f"{name} with {workers} workers failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "seconds": round(result["wall_s"], 3),
        "tokens": result["stats"]["tokens"],
        "tokens_per_second": round(result["stats"]["tokens"] / result["wall_s"]),
        "peak_rss_mb_parent": round(result["vmhwm_kb"] / 1024),
        "output_digest": result["output_digest"],
    }


def scaling(runs: dict[str, dict]) -> dict:
    """Efficiency at each N against N x the single worker's rate, and whether every N made the same artifact."""
    if "1" not in runs:
        return {}
    one = runs["1"]["tokens_per_second"]
    return {
        "efficiency": {n: round(r["tokens_per_second"] / (int(n) * one), 3) for n, r in runs.items()},
        "same_artifact_for_every_n": len({r["output_digest"] for r in runs.values()}) == 1,
    }


def megatron(args: argparse.Namespace, source: str, scratch: Path) -> dict:
    from nemotron_assets.artifacts.binidx import read_index

    prefix = scratch / "megatron"
    command = [
        sys.executable, str(Path(args.megatron) / "tools" / "preprocess_data.py"), "--input", source,
        "--output-prefix", str(prefix), "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model",
        args.tokenizer, "--workers", str(args.megatron_workers), "--append-eod", "--json-keys", "text",
    ]  # fmt: skip
    env = os.environ | {"PYTHONPATH": os.pathsep.join([args.megatron, os.environ.get("PYTHONPATH", "")])}
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"preprocess_data.py failed:\n{done.stderr[-4000:]}")
    output = Path(f"{prefix}_text_document")
    tokens = int(np.sum(read_index(output).lengths, dtype=np.int64))  # our reader checks its .idx against its .bin
    subprocess.run(["rm", "-f", f"{output}.idx", f"{output}.bin"], check=True)
    return {
        "workers": args.megatron_workers,
        "seconds": round(seconds, 3),
        "tokens": tokens,
        "tokens_per_second": round(tokens / seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", default=["gen", "pretrain", "sft", "megatron"])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    parser.add_argument("--plain-mb", type=float, default=1000.0)
    parser.add_argument("--chat-mb", type=float, default=200.0)
    parser.add_argument("--parts", type=int, default=16, help="processes generating each corpus")
    parser.add_argument("--tokenizer", required=True, help="a tokenizer directory (tokenizer.json)")
    parser.add_argument("--megatron", help="a Megatron-LM checkout (tools/ and megatron/)")
    parser.add_argument("--megatron-workers", type=int, default=16)
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "prep_scaling.json")
    args = parser.parse_args()
    args.tokenizer = str(Path(args.tokenizer).resolve())
    result = json.loads(args.out.read_text()) if args.out.exists() else {}
    result["machine"] = machine()
    result.setdefault("load_average_1_5_15", []).append({"start": os.getloadavg()})
    result |= {"date": datetime.now(UTC).isoformat(timespec="seconds"), "shards": SHARDS}
    result["corpora"] = corpora(args)  # cached in bench/.cache: free when already generated
    with tempfile.TemporaryDirectory() as tmp:
        if "megatron" in args.only:
            result["megatron"] = megatron(args, result["corpora"]["pretrain"]["path"], Path(tmp))
            print("megatron", result["megatron"], flush=True)
            save(result, args)
        for name in ("pretrain", "sft"):
            if name in args.only:
                runs = result.setdefault(name, {}).setdefault("runs", {})
                for workers in args.workers:
                    runs[str(workers)] = run_step(
                        name, result["corpora"][name]["path"], args.tokenizer, workers, Path(tmp)
                    )
                    print(name, workers, runs[str(workers)], flush=True)
                    result[name] |= scaling(runs)
                    save(result, args)
    print(json.dumps(result, indent=1))


def machine() -> dict:
    """CPU count, and which logical CPUs share cpu0's core (taskset -c 0-(N-1) takes N logical CPUs)."""
    siblings = Path("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list")
    models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
              if line.startswith("model name")]  # fmt: skip
    return {
        "cpus": os.cpu_count(),
        "cpu_model": models[0] if models else None,
        "cpu0_thread_siblings": siblings.read_text().strip() if siblings.exists() else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def save(result: dict, args: argparse.Namespace) -> None:
    """Write the results so far (with the comparison against preprocess_data.py once both sides ran)."""
    if "megatron" in result and str(args.megatron_workers) in result.get("pretrain", {}).get("runs", {}):
        ours = result["pretrain"]["runs"][str(args.megatron_workers)]["tokens_per_second"]
        result["pretrain_vs_megatron_same_workers"] = round(ours / result["megatron"]["tokens_per_second"], 3)
    result["load_average_1_5_15"][-1]["end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
