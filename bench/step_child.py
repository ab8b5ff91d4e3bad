"""Run one data-prep step in this (fresh) process and print one JSON line: wall time, stats, peak memory.

    python bench/step_child.py '{"step": "data_prep/sft_packing", "port": "training_jsonl",
                                 "jsonl": "...", "output_dir": "...", "params": {...}, "profile": null}'

Timed: `step_function(step)(run)` only, i.e. from the JSONL on disk to the published files in a fresh
output dir (tokenizer load, row count, parsing, rendering, encoding, packing, writing). Peak memory is
this process's RSS high-water mark (/proc/self/status VmHWM, and getrusage(RUSAGE_SELF).ru_maxrss),
which includes the interpreter and imported libraries; `rss_before_kb` is the RSS just before the step.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path


def proc_status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return -1


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def main() -> None:
    spec = json.loads(sys.argv[1])
    from nemotron_assets.catalog import CATALOG
    from nemotron_assets.steps import InputArtifact, StepRun, step_function

    step = CATALOG.step(spec["step"])
    params = step.preset_values("default") | spec["params"]
    output = Path(spec["output_dir"])
    output.mkdir(parents=True)
    name = spec.get("dataset", "bench_chat" if spec["port"] == "training_jsonl" else "bench_text")
    run = StepRun(
        step=step,
        params=params,
        inputs={spec["port"]: InputArtifact(name=name, type=spec["port"], path=Path(spec["jsonl"]), version="bench")},
        output_dir=output,
    )
    fn = step_function(step)  # imports the step module (not timed, like any already-loaded code location)
    rss_before = proc_status_kb("VmRSS")
    profiler = None
    if spec.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    t0 = time.perf_counter()
    result = fn(run)
    wall = time.perf_counter() - t0
    if profiler is not None:
        import io
        import pstats

        profiler.disable()
        profiler.dump_stats(spec["profile"])
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(15)
        Path(spec["profile"]).with_suffix(".txt").write_text(text.getvalue())
    out = {
        "wall_s": wall,
        "stats": result.stats,
        "rss_before_kb": rss_before,
        "vmhwm_kb": proc_status_kb("VmHWM"),
        "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "output_bytes": tree_bytes(output),
        "pid": os.getpid(),
    }
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
