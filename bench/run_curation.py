"""Curation throughput: curate/nemo_curator (NeMo Curator Pipeline in process and on Ray Data) vs a plain-Python loop.

    RAY_AUTH_MODE=disabled .venv/bin/python bench/run_curation.py              # 50 MB plain corpus, 3 repeats
    RAY_AUTH_MODE=disabled .venv/bin/python bench/run_curation.py --quick      # 2 MB, 1 repeat

Both sides filter the same {"text"} JSONL (bench/corpus.py) with the same NeMo Curator WordCountFilter object
(min/max words) and write the kept records as JSONL, so they keep identical records (checked) and the ratio
isolates what the library pipeline adds: Ray start-up, pandas batches, reader/writer stages.

* curator: the step end to end as a 2-CPU profile runs it (`executor: auto`, which is in process there), over the
  corpus split into 8 files, in a fresh subprocess per repeat (the timer covers only the step call); a run over a
  10-record file measures the fixed cost.
* curator_ray: the same with `executor: ray`, Ray given 2 CPUs (the step starts the process's Ray cluster).
* curator_ray_warm: Ray steps of one run in one process on its one Ray cluster (nemotron_assets/steps/ray_cluster.py):
  a 10-record step (pays the cluster's start), WARM_FIXED more 10-record steps (the fixed cost per step after the
  first), then the 50 MB step --repeats times.
* plain: in this process, a loop of json.loads -> WordCountFilter.score_document/keep_document -> json.dumps.

records/s = input records / wall seconds. Medians over --repeats; writes bench/results/curation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import corpus  # noqa: E402

BOUNDS = {"min_words": 50, "max_words": 2000}
SHARDS = 8
WARM_FIXED = 3
SIDES = {"curator": "auto", "curator_ray": "ray"}  # the step's executor parameter on each side
CHILD = """
import json, sys, time
from pathlib import Path
from nemotron_assets.catalog import CATALOG
from nemotron_assets.steps import InputArtifact, StepRun, step_function
step = CATALOG.step("curate/nemo_curator")
params = step.preset_values("tiny") | {"quality_filters": json.loads(sys.argv[2]), "ray.num_cpus": 2, "executor": sys.argv[4]}
results = []
for k, source in enumerate(json.loads(sys.argv[3])):  # steps of one run, one after the other
    inputs = {"raw_jsonl": InputArtifact("raw", "raw_jsonl", Path(source), "bench")}
    run = StepRun(step, params, inputs, Path(sys.argv[1]) / str(k), cpus=2)
    started = time.perf_counter()
    stats = step_function(step)(run).stats
    results.append({"seconds": time.perf_counter() - started, "stats": stats})
print(json.dumps(results))
"""


def shard(source: Path, directory: Path, count: int) -> Path:
    """The corpus split round-robin into `count` JSONL files."""
    directory.mkdir(parents=True)
    sinks = [(directory / f"part_{i}.jsonl").open("w") for i in range(count)]
    with source.open() as f:
        for i, line in enumerate(f):
            sinks[i % count].write(line)
    for sink in sinks:
        sink.close()
    return directory


def curator(executor: str, *sources: Path) -> list[dict]:
    """The step over each source in turn, in one fresh process (one Ray cluster on Ray)."""
    with tempfile.TemporaryDirectory() as out:
        env = os.environ | {"RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)}
        sources_json = json.dumps([str(s) for s in sources])
        done = subprocess.run(
            [sys.executable, "-c", CHILD, out, json.dumps(BOUNDS), sources_json, executor],
            env=env, capture_output=True, text=True, check=True, cwd=ROOT,
        )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def plain(source: Path) -> dict:
    from nemo_curator.stages.text.filters.heuristic import WordCountFilter

    word_filter = WordCountFilter(**BOUNDS)
    started = time.perf_counter()
    seen = kept = 0
    with tempfile.TemporaryDirectory() as out, source.open() as f, (Path(out) / "kept.jsonl").open("w") as sink:
        for line in f:
            record = json.loads(line)
            seen += 1
            if word_filter.keep_document(word_filter.score_document(record["text"])):
                sink.write(json.dumps(record) + "\n")
                kept += 1
    return {"seconds": time.perf_counter() - started, "stats": {"input_records": seen, "kept_records": kept}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    mb, repeats = (2.0, 1) if args.quick else (50.0, args.repeats)
    meta = corpus.plain_corpus(target_mb=mb)
    source = Path(meta["path"])
    runs = {"curator": [], "curator_ray": [], "plain": []}
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        shards = shard(source, Path(tmp) / "shards", SHARDS)  # Curator parallelises over files
        tiny = Path(tmp) / "tiny.jsonl"
        tiny.write_text("".join(source.read_text().splitlines(keepends=True)[:10]))
        fixed = {side: curator(executor, tiny)[0]["seconds"] for side, executor in SIDES.items()}
        for _ in range(repeats):  # interleaved, so drift on the shared machine hits every side
            for side, executor in SIDES.items():
                runs[side] += curator(executor, shards)
            runs["plain"].append(plain(source))
        warm = curator("ray", *[tiny] * (1 + WARM_FIXED), *[shards] * repeats)
        runs["curator_ray_warm"] = warm[1 + WARM_FIXED :]
        runs["plain"].append(plain(source))
    kept = {side: {r["stats"]["kept_records"] for r in results} for side, results in runs.items()}
    assert all(k == kept["plain"] for k in kept.values()) and len(kept["plain"]) == 1, f"kept differ: {kept}"
    ran = {side: sorted({r["stats"]["executor"] for r in runs[side]}) for side in SIDES}
    assert ran["curator_ray"] == ["ray"], ran
    warm_fixed = [r["seconds"] for r in warm[1 : 1 + WARM_FIXED]]
    median = {side: statistics.median(r["seconds"] for r in results) for side, results in runs.items()}
    rate = {side: meta["rows"] / seconds for side, seconds in median.items()}
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "load_average_1_5_15": {"start": load, "end": os.getloadavg()},
        "corpus": {k: meta[k] for k in ("rows", "mb")},
        "filter": BOUNDS,
        "kept_records": kept["plain"].pop(),
        "executor_parameter": SIDES,
        "executor_ran": ran,
        "repeats": {side: [round(r["seconds"], 3) for r in results] for side, results in runs.items()},
        "median_seconds": {side: round(s, 3) for side, s in median.items()},
        "records_per_second": {side: round(r) for side, r in rate.items()},
        "vs_plain": {side: round(rate[side] / rate["plain"], 3) for side in runs if side != "plain"},
        "fixed_seconds_10_records": {side: round(s, 3) for side, s in fixed.items()},
        "ray_warm_run": {
            "first_step_seconds_10_records": round(warm[0]["seconds"], 3),
            "fixed_seconds_per_step_after_first": [round(s, 3) for s in warm_fixed],
            "fixed_seconds_per_step_after_first_median": round(statistics.median(warm_fixed), 3),
        },
    }
    name = "curation_quick.json" if args.quick else "curation.json"
    (BENCH / "results" / name).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
