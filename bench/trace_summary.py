"""Where a profiled training step spends its time, from a PyTorch profiler trace (Chrome JSON, as Megatron-Bridge's
ProfilingConfig writes it into the run's tensorboard directory): the profiled window's wall time, the time the GPU
ran kernels (their union), and the largest totals of GPU kernels, CUDA runtime calls (launches, syncs, copies),
CPU operators and Python functions (inclusive).

    python3 bench/trace_summary.py TRACE.json [--top 15]
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections import defaultdict
from pathlib import Path

KINDS = {"kernel": "gpu_kernels", "cuda_runtime": "cuda_runtime", "cpu_op": "cpu_ops", "python_function": "python"}


def summarize(path: Path, top: int = 15) -> dict:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X" and "dur" in e]
    totals: dict[str, dict[str, list[float]]] = {kind: defaultdict(lambda: [0.0, 0]) for kind in KINDS.values()}
    for e in events:
        kind = KINDS.get(e.get("cat"))
        if kind:
            total = totals[kind][e["name"][:120]]
            total[0] += e["dur"]
            total[1] += 1
    kernels = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "kernel")
    busy, end = 0.0, float("-inf")
    for start, stop in kernels:  # the union of kernel intervals: the GPU's busy time
        if stop > end:
            busy += stop - max(start, end)
            end = stop
    window = max(e["ts"] + e["dur"] for e in events) - min(e["ts"] for e in events)
    return {
        "trace": path.name,
        "window_ms": round(window / 1e3, 1),
        "gpu_busy_ms": round(busy / 1e3, 1),
        "gpu_busy_fraction": round(busy / window, 3),
        "kernels": len(kernels),
    } | {
        kind: [
            {"name": name, "ms": round(total / 1e3, 2), "calls": calls}
            for name, (total, calls) in sorted(named.items(), key=lambda item: -item[1][0])[:top]
        ]
        for kind, named in totals.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trace", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    print(json.dumps(summarize(args.trace, args.top), indent=1))


if __name__ == "__main__":
    main()
