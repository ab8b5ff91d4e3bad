"""One benchmark measurement in this (fresh) process; prints one JSON line: wall time, tokens, peak memory.

    python bench/child.py '{"mode": "step", "step": "data_prep/sft_packing", "inputs": {"training_jsonl": "..."},
                            "output_dir": "...", "params": {...}, "profile": null}'    (also "work_dir", "gpus", "cpus")
    python bench/child.py '{"mode": "ceiling", "kind": "chat", "jsonl": "...", "tokenizer": "...",
                            "chat_template": null, "batch": 1024}'

Ceiling: the texts are loaded first (json.loads of every line into a list; not timed), then only chat-template
rendering (chat) + `encode_batch_fast(texts, add_special_tokens=False)` in batches, reading `.ids` of every
encoding, is timed.

Step: timed around `step_function(step)(run)` only, i.e. from the JSONL on disk to the published files in a fresh
output dir (tokenizer load, row count, parsing, rendering, encoding, packing, writing). Peak memory is
this process's RSS high-water mark (/proc/self/status VmHWM, and getrusage(RUSAGE_SELF).ru_maxrss),
which includes the interpreter and imported libraries; `rss_before_kb` is the RSS just before the step.
"""

from __future__ import annotations

import hashlib
import json
import logging
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


def load_chat(path: str) -> list[list[dict]]:
    with open(path, "rb") as f:
        return [json.loads(line)["messages"] for line in f if line.strip()]


def load_plain(path: str) -> list[str]:
    with open(path, "rb") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def ceiling(tok, items: list, template=None, batch_size: int = 1024) -> dict:
    """Render (chat only) + encode_batch_fast in batches; only this is timed."""
    backend = tok.backend
    tokens = 0
    render_s = encode_s = 0.0
    t0 = time.perf_counter()
    for i in range(0, len(items), batch_size):
        batch = items[i : i + batch_size]
        t = time.perf_counter()
        texts = [template.render(m) for m in batch] if template is not None else batch
        t1 = time.perf_counter()
        for encoding in backend.encode_batch_fast(texts, add_special_tokens=False):
            tokens += len(encoding.ids)
        t2 = time.perf_counter()
        render_s += t1 - t
        encode_s += t2 - t1
    wall = time.perf_counter() - t0
    return {"tokens": tokens, "wall_s": wall, "render_s": render_s, "encode_s": encode_s}


def run_ceiling(spec: dict) -> dict:
    from nemotron_assets.steps.data_prep.chat_template import ChatTemplate, resolve_template_source
    from nemotron_assets.steps.data_prep.tokenizer import load_tokenizer

    tok = load_tokenizer(spec["tokenizer"])
    t = time.perf_counter()
    items = load_chat(spec["jsonl"]) if spec["kind"] == "chat" else load_plain(spec["jsonl"])
    load_s = time.perf_counter() - t
    template = None
    if spec["kind"] == "chat":
        template = ChatTemplate(
            resolve_template_source(spec.get("chat_template"), tok.chat_template), tok.special_tokens
        )
    rss_before = proc_status_kb("VmRSS")
    out = ceiling(tok, items, template, spec.get("batch", 1024))
    out |= {"items": len(items), "load_s": load_s, "rss_before_kb": rss_before}
    if spec["kind"] == "plain":
        out["chars"] = sum(map(len, items))
    return out


def main() -> None:
    spec = json.loads(sys.argv[1])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")  # launched processes' output
    if spec.get("mode") == "ceiling":
        out = run_ceiling(spec)
        out |= {"vmhwm_kb": proc_status_kb("VmHWM"), "pid": os.getpid()}
        print(json.dumps(out))
        return
    from nemotron_assets.catalog import CATALOG
    from nemotron_assets.digests import tree_digests
    from nemotron_assets.steps import InputArtifact, StepRun, step_function
    from nemotron_assets.steps.launch import subprocess_launcher

    launched_s = []  # seconds inside launched processes: the rest of the step's wall time is the platform's own

    def timed_launcher(command: list[str], env: dict[str, str]) -> None:
        started = time.perf_counter()
        subprocess_launcher(logging.getLogger("bench"))(command, env)
        launched_s.append(time.perf_counter() - started)

    step = CATALOG.step(spec["step"])
    params = step.preset_values("default") | spec["params"]
    output = Path(spec["output_dir"])
    output.mkdir(parents=True)
    run = StepRun(
        step=step,
        params=params,
        inputs={
            port: InputArtifact(name=f"bench_{port}", type=port, path=Path(path), version="bench")
            for port, path in spec["inputs"].items()
        },
        output_dir=output,
        work_dir=Path(spec["work_dir"]) if spec.get("work_dir") else None,
        gpus=spec.get("gpus", 0),
        launcher=timed_launcher,
        cpus=spec.get("cpus"),
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
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("cumulative").print_stats(15)
        stats.sort_stats("tottime").print_stats(15)
        Path(spec["profile"]).with_suffix(".txt").write_text(text.getvalue())
    t0 = time.perf_counter()
    digests = tree_digests(output)  # what publication adds: the artifact store seals every file with its digest
    seal_s = time.perf_counter() - t0
    out = {
        "wall_s": wall,
        "launched_s": sum(launched_s),
        "seal_s": seal_s,
        "stats": result.stats,
        "rss_before_kb": rss_before,
        "vmhwm_kb": proc_status_kb("VmHWM"),
        "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "output_bytes": tree_bytes(output),
        "output_digest": hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest(),
        "pid": os.getpid(),
    }
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
