"""How long deciding "reuse" takes for a stage with a 5 GB source and a 2 GB model, cold and warm.

A data_prep/sft_packing stage consumes a 5 GB chat JSONL source (five 1 GB files) with a `tokenizer` parameter
naming a 2 GB model directory (the tiny BPE tokenizer plus two 1 GB weight files). The version it decides on
hashes all 7 GB: that is the cost every materialization used to pay. Measured in one process, in this order:

- `machine`: BLAKE3 (every core) and sha256 over a 1 GiB buffer already in memory, and BLAKE3 over the 7 GB of
  files themselves (memory-mapped, in the page cache; what `b3sum` does): the machine's hash rates;
- `first`: `stage_version` with an empty digest cache (every byte read; the files are in the page cache);
- `reuse`: `run_stage` after an artifact of that version was published: the whole decision, nothing changed;
- `changed`: one source file rewritten (same size), then `stage_version` again: only that file is re-read.

    .venv/bin/python bench/run_reuse.py      # ~1 min here; writes bench/results/reuse.json
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import blake3

ROOT = Path(__file__).resolve().parents[1]
GB = 1 << 30


def write_gb(path: Path, line: bytes, seed: int) -> None:
    """A 1 GiB file of JSONL lines (distinct per file), written in 64 MiB blocks."""
    block = (line.replace(b"SEED", str(seed).encode()) * (64 * (1 << 20) // len(line) + 1))[: 64 * (1 << 20)]
    block = block[: block.rfind(b"\n") + 1]
    with path.open("wb") as f:
        while f.tell() + len(block) <= GB:
            f.write(block)


def rate(seconds: float, size: int) -> float:
    return round(size / seconds / 1e9, 3)


def main() -> None:
    os.environ.setdefault("NEMOTRON_FIXTURES", str(ROOT / ".nemotron" / "fixtures"))
    work = Path(tempfile.mkdtemp(prefix="reuse-", dir=os.environ.get("BENCH_TMP")))
    os.environ["NEMOTRON_DIGEST_CACHE"] = str(work / "digests.sqlite")
    os.environ["NEMOTRON_ARTIFACT_ROOT"] = str(work / "store")
    from nemotron_assets.digests import read_digest
    from nemotron_assets.execution import run_stage, stage_version
    from nemotron_assets.fixtures import tiny_tokenizer
    from nemotron_assets.pipelines import PipelineSpec
    from resources.artifact_store import ArtifactStore, seal

    try:
        corpus, model = work / "corpus", Path(shutil.copytree(tiny_tokenizer(), work / "model"))
        corpus.mkdir()
        line = json.dumps({"messages": [{"role": "user", "content": "q SEED"}, {"role": "assistant", "content": "a"}]})
        for i in range(5):
            write_gb(corpus / f"part-{i}.jsonl", line.encode() + b"\n", i)
        for i in range(2):
            (model / f"model-{i}.safetensors").write_bytes(os.urandom(GB))
        files = sorted([*corpus.iterdir(), *model.iterdir()])
        size = sum(p.stat().st_size for p in files)
        os.sync()  # written back: a page under writeback stalls the first read of a file written seconds ago
        time.sleep(0.5)  # settled files: the cache keeps digests only of files not written during their hashing

        buffer = os.urandom(GB)
        started = time.perf_counter()
        blake3.blake3(buffer, max_threads=blake3.blake3.AUTO).digest()
        machine_blake3 = rate(time.perf_counter() - started, GB)
        started = time.perf_counter()
        hashlib.sha256(buffer).digest()
        machine_sha256 = rate(time.perf_counter() - started, GB)
        del buffer
        started = time.perf_counter()
        for path in files:  # the raw hasher over the same files (what b3sum does): the ceiling on this data
            read_digest(path)
        files_blake3 = rate(time.perf_counter() - started, size)

        pipeline = PipelineSpec.parse(
            {
                "name": "reuse",
                "description": "bench",
                "sources": [{"name": "chat", "type": "training_jsonl", "path": str(corpus)}],
                "stages": [{"name": "packed", "step": "data_prep/sft_packing", "consumes": {"training_jsonl": "chat"}}],
            }
        )
        stage = pipeline.stage("packed")
        params = pipeline.params(stage) | {"tokenizer": str(model)}
        store = ArtifactStore(root=str(work / "store"))

        started = time.perf_counter()
        *_, version = stage_version(pipeline, stage, params, store)
        first = time.perf_counter() - started

        def publish(staging: Path) -> dict:
            (staging / "note").write_text("published by the benchmark, standing in for packed shards")
            return seal(staging, {"type": "packed_parquet", "version": version, "stats": {}})

        store.publish(("reuse", "packed"), version, publish)
        started = time.perf_counter()
        result = run_stage(pipeline, stage, params, store, "local_cpu")
        reuse = time.perf_counter() - started
        assert result.reused and result.version == version

        write_gb(corpus / "part-0.jsonl", line.encode() + b"\n", 99)
        os.sync()
        started = time.perf_counter()
        *_, changed_version = stage_version(pipeline, stage, params, store)
        changed = time.perf_counter() - started
        assert changed_version != version

        results = {
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
            "bytes": size,
            "machine_hash_gbps": {"blake3": machine_blake3, "sha256": machine_sha256, "blake3_files": files_blake3},
            "first_decision_seconds": round(first, 3),
            "first_decision_gbps": rate(first, size),
            "first_vs_machine_blake3": round(rate(first, size) / machine_blake3, 3),
            "first_vs_blake3_files": round(rate(first, size) / files_blake3, 3),
            "first_vs_machine_sha256": round(rate(first, size) / machine_sha256, 3),
            "reuse_decision_seconds": round(reuse, 4),
            "one_file_changed_seconds": round(changed, 3),
            "targets": {"reuse_decision_seconds": "< 1", "first_vs_blake3_files": ">= 0.9"},
        }
        out = ROOT / "bench" / "results" / "reuse.json"
        out.write_text(json.dumps(results, indent=1) + "\n")
        print(json.dumps(results, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
