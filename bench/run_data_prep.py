"""Data-prep throughput, packing density and peak memory: our steps vs the tokenizer's own ceiling.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/run_data_prep.py            # full run (~15 min on 2 cores)
    HF_HUB_OFFLINE=1 .venv/bin/python bench/run_data_prep.py --quick    # 2 MB smoke run, 1 repeat

One process run measures, for each corpus (bench/corpus.py, cached in bench/.cache/):

* ceiling: the tokenizer alone, in a fresh subprocess (bench/child.py), texts pre-loaded in memory (json.loads
  of every line, not timed): chat conversations rendered with ChatTemplate(tok.chat_template) then
  encode_batch_fast in batches of 1024, reading `.ids` of every encoding; plain text encoded the same way
  without a template. Only render + encode is timed. tokens/s = tokens / seconds.
* step end to end: step_function(step)(run) from the JSONL on disk into a fresh output dir, each run in a
  fresh subprocess (bench/child.py) that also reports its RSS high-water mark. tokens/s = stats tokens /
  wall seconds.
* ceiling and step runs are interleaved, repeated --repeats times; medians are reported.
* memory flatness: sft_packing and pretrain_prep on half / full / double corpora (one run each at half and
  double; the full-size figure is the median of the timed repeats).

Writes bench/results/data_prep.json and bench/results/data_prep.md, and prints the markdown tables.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import corpus  # noqa: E402

TOKENIZER = str(ROOT / ".nemotron" / "fixtures" / "smollm2-135m-instruct")
CEILING_BATCH = 1024
OUT_ROOT = BENCH / ".cache" / "out"

# Reference figures measured earlier on this 2-core machine (context only; not re-measured here).
REFERENCE = {
    "chat_ceiling_tok_s": 565_000,
    "plain_ceiling_tok_s": 691_000,
    "nemotron_packer_tok_s": 55_000,
    "megatron_preprocess_data_2_workers_tok_s": 213_000,
}
TARGETS = {
    "sft_packing_vs_chat_ceiling": 0.7,
    "pretrain_prep_vs_plain_ceiling": 0.8,
    "ffd_gap_points_max": 0.2,
}

SFT = "data_prep/sft_packing"
PRETRAIN = "data_prep/pretrain_prep"


def sft_params(chat_template: str | None = None, num_shards: int = 1) -> dict:
    return {
        "tokenizer": TOKENIZER,
        "chat_template": chat_template,
        "pack_size": 4096,
        "algorithm": "first_fit_decreasing",
        "num_shards": num_shards,
    }


def pretrain_params() -> dict:
    return {"tokenizer": TOKENIZER, "num_shards": 4, "valid_shards": 1, "test_shards": 1}


# ------------------------------------------------------------------------------------- measurements


def run_child(label: str, spec: dict) -> dict:
    """One measurement in a fresh interpreter (bench/child.py); returns its JSON result or an error."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(BENCH / "child.py"), json.dumps(spec)], capture_output=True, text=True, cwd=ROOT
    )
    process_s = time.perf_counter() - t0
    if proc.returncode != 0:
        print(f"  !! {label} failed (rc {proc.returncode})\n{proc.stderr[-4000:]}", flush=True)
        return {"error": proc.stderr[-8000:], "returncode": proc.returncode, "process_s": process_s}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = process_s
    return result


def run_ceiling(label: str, kind: str, jsonl: str, chat_template: str | None = None) -> dict:
    result = run_child(
        label,
        {
            "mode": "ceiling",
            "kind": kind,
            "jsonl": jsonl,
            "tokenizer": TOKENIZER,
            "chat_template": chat_template,
            "batch": CEILING_BATCH,
        },
    )
    if "error" not in result:
        result["tok_s"] = result["tokens"] / result["wall_s"]
    return result


def run_step(label: str, step: str, port: str, jsonl: str, params: dict, profile: str | None = None) -> dict:
    out = OUT_ROOT / label
    shutil.rmtree(out, ignore_errors=True)
    OUT_ROOT.mkdir(parents=True, exist_ok=True)
    spec = {
        "mode": "step",
        "step": step,
        "inputs": {port: jsonl},
        "output_dir": str(out),
        "params": params,
        "profile": profile,
    }
    result = run_child(label, spec)
    shutil.rmtree(out, ignore_errors=True)
    if "error" not in result:
        result["tok_s"] = result["stats"]["tokens"] / result["wall_s"]
    return result


# ------------------------------------------------------------------------------------------ summaries


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(repeats: list[dict]) -> dict:
    ok = [r for r in repeats if "error" not in r]
    summary = {"repeats": repeats, "n_ok": len(ok)}
    if ok:
        summary |= {
            "median_wall_s": med([r["wall_s"] for r in ok]),
            "median_tok_s": med([r["tok_s"] for r in ok]),
            "tokens": ok[0].get("tokens", ok[0].get("stats", {}).get("tokens")),
        }
        if "vmhwm_kb" in ok[0]:
            summary["median_vmhwm_mb"] = med([r["vmhwm_kb"] / 1024 for r in ok])
            summary["max_vmhwm_mb"] = max(r["vmhwm_kb"] / 1024 for r in ok)
            summary["median_rss_before_mb"] = med([r["rss_before_kb"] / 1024 for r in ok])
        if "stats" in ok[0]:
            summary["stats"] = ok[0]["stats"]
    return summary


def ratio(step: dict, ceil: dict) -> dict:
    if not step.get("median_tok_s") or not ceil.get("median_tok_s"):
        return {"median_over_median": None, "paired": [], "paired_median": None}
    paired = [
        s["tok_s"] / c["tok_s"] for s, c in zip(step["repeats"], ceil["repeats"], strict=True) if "error" not in s
    ]
    return {
        "median_over_median": step["median_tok_s"] / ceil["median_tok_s"],
        "paired": paired,
        "paired_median": med(paired),
    }


def machine_info() -> dict:
    import numpy
    import pyarrow
    import tokenizers

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem = next(
        (
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        ),
        0,
    )
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "mem_total_gb": round(mem / 1024**2, 1),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "tokenizers": tokenizers.__version__,
        "numpy": numpy.__version__,
        "pyarrow": pyarrow.__version__,
        "env": {k: os.environ.get(k) for k in ("TOKENIZERS_PARALLELISM", "RAYON_NUM_THREADS", "HF_HUB_OFFLINE")},
    }


def fmt_k(x) -> str:
    return "-" if x is None else f"{x / 1000:,.0f}k"


def fmt_x(x) -> str:
    return "-" if x is None else f"{x:.2f}x"


def markdown(res: dict) -> str:
    m, c = res["measurements"], res["corpora"]
    chat, plain = c["chat"], c["plain"]
    rows = [
        "| measurement | corpus | tokens | median s | median tokens/s | repeats (k tokens/s) | vs ceiling | paired | target | reference (this machine) |",
        "|---|---|---:|---:|---:|---|---:|---:|---|---|",
    ]

    def row(name, key, corp, ceil_key=None, target="", ref="", ratio_key=None):
        s = m.get(key)
        if not s:
            return
        if not s.get("n_ok"):
            rows.append(f"| {name} | {corp} | - | - | FAILED | - | - | - | {target} | {ref} |")
            return
        reps = ", ".join("err" if "error" in r else f"{r['tok_s'] / 1000:.0f}" for r in s["repeats"])
        ratio = res["ratios"].get(ratio_key or key, {})
        rows.append(
            f"| {name} | {corp} | {s['tokens']:,} | {s['median_wall_s']:.2f} | {fmt_k(s['median_tok_s'])} | {reps} "
            f"| {fmt_x(ratio.get('median_over_median')) if ceil_key else '1.00x (ceiling)'} "
            f"| {fmt_x(ratio.get('paired_median')) if ceil_key else ''} | {target} | {ref} |"
        )

    chat_c = f"chat {chat['mb']:.1f} MB"
    plain_c = f"plain {plain['mb']:.1f} MB"
    row("ceiling: render (tokenizer template) + encode_batch_fast", "chat_ceiling", chat_c, ref="565k")
    row("ceiling: render (chatml) + encode_batch_fast", "chat_ceiling_chatml", chat_c)
    row(
        "sft_packing, tokenizer template, FFD, 1 shard",
        "sft_default",
        chat_c,
        "chat_ceiling",
        ">= 0.70x",
        "NVIDIA packer ~55k",
    )
    row(
        "sft_packing, chatml (generation markers), FFD, 1 shard",
        "sft_chatml",
        chat_c,
        "chat_ceiling_chatml",
        ">= 0.70x",
        ratio_key="sft_chatml_vs_chatml_ceiling",
    )
    row("sft_packing, tokenizer template, FFD, 4 shards", "sft_shards4", chat_c, "chat_ceiling", ">= 0.70x")
    row("ceiling: encode_batch_fast", "plain_ceiling", plain_c, ref="691k")
    row(
        "pretrain_prep, 4 shards (1 valid, 1 test)",
        "pretrain",
        plain_c,
        "plain_ceiling",
        ">= 0.80x",
        "Megatron preprocess_data.py, 2 workers ~213k",
    )

    rows.append(
        f"| reference: NVIDIA Nemotron packer (end to end) | chat | - | - | ~55k | - | "
        f"{REFERENCE['nemotron_packer_tok_s'] / REFERENCE['chat_ceiling_tok_s']:.2f}x of ref. 565k | - | earlier measurement |"
    )
    rows.append(
        f"| reference: Megatron-LM tools/preprocess_data.py, 2 workers | plain | - | - | ~213k | - | "
        f"{REFERENCE['megatron_preprocess_data_2_workers_tok_s'] / REFERENCE['plain_ceiling_tok_s']:.2f}x of ref. 691k | - | earlier measurement |"
    )

    rows += [
        "",
        "| target (met = both ratios reach it) | median / median | paired median | met |",
        "|---|---:|---:|---|",
    ]
    for key, name, target in (
        ("sft_default", "sft_packing (tokenizer template) >= 0.7x chat ceiling", 0.7),
        ("sft_chatml_vs_chatml_ceiling", "sft_packing (chatml) >= 0.7x chatml ceiling", 0.7),
        ("sft_shards4", "sft_packing (4 shards) >= 0.7x chat ceiling", 0.7),
        ("pretrain", "pretrain_prep >= 0.8x plain ceiling", 0.8),
    ):
        ratio = res["ratios"].get(key, {})
        both = (ratio.get("median_over_median"), ratio.get("paired_median"))
        if None not in both:
            rows.append(f"| {name} | {both[0]:.2f}x | {both[1]:.2f}x | {'yes' if min(both) >= target else 'no'} |")
    for key, name in (
        ("sft_default", "tokenizer template, 1 shard"),
        ("sft_chatml", "chatml, 1 shard"),
        ("sft_shards4", "tokenizer template, 4 shards"),
    ):
        p = res["packing"].get(key)
        if p:
            rows.append(
                f"| FFD within 0.2 points of the lower bound ({name}) | {p['gap_points']:.3f} | "
                f"{'yes' if p['gap_points'] <= 0.2 else 'no'} |"
            )
    for name, entries in res.get("memory", {}).items():
        ok = [e for e in entries if "error" not in e]
        if len(ok) >= 2:
            sizes = " / ".join(f"{e['corpus_mb']:.0f}" for e in ok)
            peaks = " / ".join(f"{e['vmhwm_mb']:.0f}" for e in ok)
            steps = ", ".join(f"{b['vmhwm_mb'] / a['vmhwm_mb'] - 1:+.0%}" for a, b in itertools.pairwise(ok))
            rows.append(
                f"| {name} peak memory flat as the corpus grows ({sizes} MB) | {peaks} MB (per step {steps}) | see table |"
            )

    rows += [
        "",
        "| packing (first_fit_decreasing, pack 4096) | rows | sequences | bins | truncated | efficiency % | lower bound % | gap (points) | target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for key, name in (
        ("sft_default", "tokenizer template, 1 shard"),
        ("sft_chatml", "chatml, 1 shard"),
        ("sft_shards4", "tokenizer template, 4 shards"),
    ):
        s = m.get(key)
        if s and s.get("n_ok"):
            st = s["stats"]
            gap = st["packing_lower_bound_efficiency"] - st["packing_efficiency"]
            rows.append(
                f"| {name} | {st['rows']:,} | {st['sequences']:,} | {st['bins']:,} | {st['truncated']:,} | "
                f"{st['packing_efficiency']:.3f} | {st['packing_lower_bound_efficiency']:.3f} | {gap:.3f} | <= 0.2 |"
            )

    mem = res.get("memory", {})
    if mem:
        rows += [
            "",
            "| peak memory (VmHWM, fresh process) | scale | corpus MB | tokens | peak RSS MB | RSS before step MB | wall s | tokens/s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for step_key, entries in mem.items():
            for e in entries:
                if "error" in e:
                    rows.append(f"| {step_key} | {e['scale']} | {e['corpus_mb']:.1f} | FAILED | | | | |")
                    continue
                rows.append(
                    f"| {step_key} | {e['scale']:g} | {e['corpus_mb']:.1f} | {e['tokens']:,} | {e['vmhwm_mb']:.0f} | "
                    f"{e['rss_before_mb']:.0f} | {e['wall_s']:.1f} | {fmt_k(e['tok_s'])} |"
                )
    return "\n".join(rows)


def run_profiles(mb: float) -> dict:
    """cProfile each step variant on `mb`-MB corpora; top 15 by cumulative and by own time."""
    print(f"== profile ({mb:g} MB corpora, cProfile)", flush=True)
    prof_dir = BENCH / "results"
    prof_dir.mkdir(parents=True, exist_ok=True)
    small_chat, small_plain = corpus.chat_corpus(mb), corpus.plain_corpus(mb)
    profiles = {}
    for key, step, port, meta, params in (
        ("sft_packing", SFT, "training_jsonl", small_chat, sft_params()),
        ("sft_packing_chatml", SFT, "training_jsonl", small_chat, sft_params("chatml")),
        ("pretrain_prep", PRETRAIN, "filtered_jsonl", small_plain, pretrain_params()),
    ):
        prof = BENCH / ".cache" / f"profile_{key}_{mb:g}mb.prof"
        res = run_step(f"profile_{key}", step, port, meta["path"], params, profile=str(prof))
        txt = prof.with_suffix(".txt")
        if txt.exists():
            shutil.copy(txt, prof_dir / txt.name)
            profiles[key] = {
                "corpus_mb": meta["mb"],
                "wall_s_under_profiler": res.get("wall_s"),
                "top15": txt.read_text(),
            }
            print(
                f"  {key:20s} {res.get('wall_s', float('nan')):6.2f}s under cProfile -> {prof_dir / txt.name}",
                flush=True,
            )
    return profiles


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chat-mb", type=float, default=20.0)
    ap.add_argument("--plain-mb", type=float, default=50.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory-scales", default="0.5,2", help="extra corpus scales for the memory runs ('' = none)")
    ap.add_argument("--no-shards4", action="store_true", help="skip the sft_packing num_shards=4 variant")
    ap.add_argument(
        "--profile", action="store_true", help="also cProfile the steps on small corpora (top 15 cumulative + tottime)"
    )
    ap.add_argument("--profile-mb", type=float, default=2.0, help="chat and plain corpus size for --profile")
    ap.add_argument(
        "--profile-only", action="store_true", help="only the --profile runs (writes bench/results/profile_*.txt)"
    )
    ap.add_argument("--quick", action="store_true", help="2 MB corpora, 1 repeat, no memory scales")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.quick:
        args.chat_mb, args.plain_mb, args.repeats, args.memory_scales = 2.0, 2.0, 1, ""
    out = args.out or BENCH / "results" / ("data_prep_quick.json" if args.quick else "data_prep.json")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.profile_only:
        run_profiles(args.profile_mb)
        return
    started = time.perf_counter()

    from nemotron_assets.steps.data_prep.tokenizer import load_tokenizer

    print("== corpora", flush=True)
    t = time.perf_counter()
    chat_meta, plain_meta = corpus.chat_corpus(args.chat_mb), corpus.plain_corpus(args.plain_mb)
    scales = [float(s) for s in args.memory_scales.split(",") if s.strip()]
    extra = {s: (corpus.chat_corpus(args.chat_mb * s), corpus.plain_corpus(args.plain_mb * s)) for s in scales}
    print(f"  ready in {time.perf_counter() - t:.1f}s", flush=True)

    tok = load_tokenizer(TOKENIZER)  # for the record (vocab size, fingerprint); every measurement loads its own
    loading = (
        "in the ceiling's own fresh process: the whole JSONL file read line by line, json.loads of every line "
        "into a Python list (messages lists / text strings), before timing; not timed (load_s)"
    )
    plan = [
        ("chat_ceiling", lambda: run_ceiling("chat_ceiling", "chat", chat_meta["path"])),
        ("sft_default", lambda: run_step("sft_default", SFT, "training_jsonl", chat_meta["path"], sft_params())),
        ("chat_ceiling_chatml", lambda: run_ceiling("chat_ceiling_chatml", "chat", chat_meta["path"], "chatml")),
        ("sft_chatml", lambda: run_step("sft_chatml", SFT, "training_jsonl", chat_meta["path"], sft_params("chatml"))),
    ]
    if not args.no_shards4:
        plan.append(
            (
                "sft_shards4",
                lambda: run_step("sft_shards4", SFT, "training_jsonl", chat_meta["path"], sft_params(num_shards=4)),
            )
        )
    plan += [
        ("plain_ceiling", lambda: run_ceiling("plain_ceiling", "plain", plain_meta["path"])),
        ("pretrain", lambda: run_step("pretrain", PRETRAIN, "filtered_jsonl", plain_meta["path"], pretrain_params())),
    ]
    raw: dict[str, list[dict]] = {key: [] for key, _ in plan}
    for r in range(args.repeats):
        print(f"== repeat {r + 1}/{args.repeats}", flush=True)
        for key, fn in plan:
            result = fn()
            raw[key].append(result)
            if "error" in result:
                continue
            extra_txt = f", peak RSS {result['vmhwm_kb'] / 1024:.0f} MB" if "vmhwm_kb" in result else ""
            print(f"  {key:22s} {result['wall_s']:7.2f}s {result['tok_s'] / 1000:7.0f}k tok/s{extra_txt}", flush=True)

    measurements = {key: summarize(v) for key, v in raw.items()}
    ratios = {
        "sft_default": ratio(measurements["sft_default"], measurements["chat_ceiling"]),
        "sft_chatml": ratio(measurements["sft_chatml"], measurements["chat_ceiling"]),
        "sft_chatml_vs_chatml_ceiling": ratio(measurements["sft_chatml"], measurements["chat_ceiling_chatml"]),
        "pretrain": ratio(measurements["pretrain"], measurements["plain_ceiling"]),
    }
    if "sft_shards4" in measurements:
        ratios["sft_shards4"] = ratio(measurements["sft_shards4"], measurements["chat_ceiling"])
    packing = {}
    for key in ("sft_default", "sft_chatml", "sft_shards4"):
        st = measurements.get(key, {}).get("stats")
        if st:
            packing[key] = {
                "efficiency_pct": st["packing_efficiency"],
                "lower_bound_pct": st["packing_lower_bound_efficiency"],
                "gap_points": round(st["packing_lower_bound_efficiency"] - st["packing_efficiency"], 3),
            }

    # memory flatness: half / full / double; full = the timed repeats above
    memory: dict[str, list[dict]] = {"sft_packing": [], "pretrain_prep": []}

    def mem_entry(scale, meta, res):
        if "error" in res:
            return {"scale": scale, "corpus_mb": meta["mb"], "error": res["error"]}
        return {
            "scale": scale,
            "corpus_mb": meta["mb"],
            "rows": meta["rows"],
            "tokens": res["stats"]["tokens"],
            "vmhwm_mb": res["vmhwm_kb"] / 1024,
            "ru_maxrss_mb": res["ru_maxrss_kb"] / 1024,
            "rss_before_mb": res["rss_before_kb"] / 1024,
            "wall_s": res["wall_s"],
            "tok_s": res["tok_s"],
            "repeats": 1,
        }

    for scale in sorted(scales + [1.0]):
        if scale == 1.0:
            for key, name, meta in (
                ("sft_default", "sft_packing", chat_meta),
                ("pretrain", "pretrain_prep", plain_meta),
            ):
                s = measurements[key]
                if s.get("n_ok"):
                    ok = [x for x in s["repeats"] if "error" not in x]
                    memory[name].append(
                        {
                            "scale": 1.0,
                            "corpus_mb": meta["mb"],
                            "rows": meta["rows"],
                            "tokens": s["tokens"],
                            "vmhwm_mb": s["median_vmhwm_mb"],
                            "max_vmhwm_mb": s["max_vmhwm_mb"],
                            "ru_maxrss_mb": med([x["ru_maxrss_kb"] / 1024 for x in ok]),
                            "rss_before_mb": s["median_rss_before_mb"],
                            "wall_s": s["median_wall_s"],
                            "tok_s": s["median_tok_s"],
                            "repeats": len(ok),
                        }
                    )
            continue
        chat_s, plain_s = extra[scale]
        print(f"== memory, scale {scale:g}", flush=True)
        res = run_step(f"mem_sft_{scale:g}", SFT, "training_jsonl", chat_s["path"], sft_params())
        memory["sft_packing"].append(mem_entry(scale, chat_s, res))
        res2 = run_step(f"mem_pretrain_{scale:g}", PRETRAIN, "filtered_jsonl", plain_s["path"], pretrain_params())
        memory["pretrain_prep"].append(mem_entry(scale, plain_s, res2))
        for name, e in (("sft_packing", memory["sft_packing"][-1]), ("pretrain_prep", memory["pretrain_prep"][-1])):
            if "error" not in e:
                print(
                    f"  {name:14s} {e['corpus_mb']:6.1f} MB  peak RSS {e['vmhwm_mb']:6.0f} MB  {e['wall_s']:6.1f}s",
                    flush=True,
                )

    profiles = run_profiles(args.profile_mb) if args.profile else {}

    plain_tokens = measurements["plain_ceiling"].get("tokens")
    plain_chars = next((r["chars"] for r in raw["plain_ceiling"] if "chars" in r), None)
    results = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        "tokenizer": {"path": TOKENIZER, "vocab_size": tok.vocab_size, "fingerprint": tok.fingerprint},
        "corpora": {
            "chat": chat_meta
            | {
                "tokens_rendered_tokenizer_template": measurements["chat_ceiling"].get("tokens"),
                "tokens_rendered_chatml": measurements["chat_ceiling_chatml"].get("tokens"),
                "load_s": med([r.get("load_s") for r in raw["chat_ceiling"]]),
            },
            "plain": plain_meta
            | {
                "tokens": plain_tokens,
                "load_s": med([r.get("load_s") for r in raw["plain_ceiling"]]),
                "chars": plain_chars,
                "chars_per_token": plain_chars / plain_tokens if plain_tokens else None,
            },
            "memory_scales": {f"{s:g}": {"chat": c, "plain": p} for s, (c, p) in extra.items()},
        },
        "method": {
            "ceiling": f"a fresh subprocess (bench/child.py) per repeat with its own freshly loaded tokenizer (cold BPE cache); "
            f"texts pre-loaded in memory ({loading}); timed: chat = ChatTemplate(tok.chat_template).render(messages) "
            f"then tok.backend.encode_batch_fast(texts, add_special_tokens=False) in batches of {CEILING_BATCH}, "
            "reading .ids of every encoding; plain = the same without a template. tokens/s = tokens / seconds.",
            "step": "step_function(step)(StepRun) from the JSONL on disk into a fresh output dir, in a fresh subprocess "
            "(bench/child.py); timed around the step call only. tokens/s = stats['tokens'] / wall seconds. "
            "Input files are in the page cache (the harness just read them).",
            "memory": "VmHWM from /proc/self/status (and ru_maxrss) read inside the step's subprocess after the step; "
            "includes interpreter + libraries (rss_before_mb = RSS just before the step call).",
            "repeats": args.repeats,
            "order_per_repeat": [key for key, _ in plan],
        },
        "params": {
            "sft_default": sft_params(),
            "sft_chatml": sft_params("chatml"),
            "sft_shards4": sft_params(num_shards=4),
            "pretrain": pretrain_params(),
        },
        "measurements": measurements,
        "ratios": ratios,
        "packing": packing,
        "memory": memory,
        "targets": TARGETS,
        "reference_this_machine": REFERENCE,
        "profiles": profiles,
        "total_harness_s": time.perf_counter() - started,
    }
    results["markdown"] = markdown(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    out.with_suffix(".md").write_text(results["markdown"] + "\n")
    print()
    print(results["markdown"])
    print(f"\nwrote {out} ({results['total_harness_s']:.0f}s total)")


if __name__ == "__main__":
    main()
