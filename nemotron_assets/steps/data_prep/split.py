"""data_prep/split: a held-out split of JSONL records, decided per record by a seeded hash of its content.

A record is held out when `hash(seed, canonical JSON)` falls below `test_ratio`: the decision needs no global
shuffle (it streams, and a record added later never moves another), and identical records share a split, so a
duplicated conversation cannot be trained on and scored at once.
"""

from __future__ import annotations

import hashlib
import json

from nemotron_assets.artifacts.files import HELD_OUT, SPLITS_DIR, TRAIN, data_files
from nemotron_assets.artifacts.jsonl import iter_lines, parse_line
from nemotron_assets.steps import StepResult, StepRun

PART = "part-00000.jsonl"


def held_out(record: dict, seed: int, ratio: float) -> bool:
    canonical = json.dumps([seed, record], sort_keys=True, ensure_ascii=False).encode()
    return int.from_bytes(hashlib.blake2b(canonical, digest_size=8).digest(), "big") < ratio * 2**64


def run(run: StepRun) -> StepResult:
    ratio, seed = run.p.test_ratio, run.p.seed
    if not 0 < ratio < 1:
        raise run.error("invalid_split_ratio", f"test_ratio = {ratio}")
    files = data_files(run.input("training_jsonl").path, (".jsonl",))
    counts = {TRAIN: 0, HELD_OUT: 0}
    outputs = {}
    for split in counts:
        (run.output_dir / SPLITS_DIR / split).mkdir(parents=True)
        outputs[split] = (run.output_dir / SPLITS_DIR / split / PART).open("wb")
    try:
        for where, line in iter_lines(files):
            split = HELD_OUT if held_out(parse_line(where, line), seed, ratio) else TRAIN
            outputs[split].write(line if line.endswith(b"\n") else line + b"\n")
            counts[split] += 1
    finally:
        for output in outputs.values():
            output.close()
    if counts[HELD_OUT] == 0:
        raise run.error("empty_held_out_split", f"0 of {counts[TRAIN]} records at test_ratio {ratio}")
    if counts[TRAIN] == 0:
        raise run.error("empty_train_split", f"all {counts[HELD_OUT]} records at test_ratio {ratio}")
    stats = {"train_records": counts[TRAIN], "held_out_records": counts[HELD_OUT]}
    return StepResult(stats, {"split": {"test_ratio": ratio, "seed": seed}})
