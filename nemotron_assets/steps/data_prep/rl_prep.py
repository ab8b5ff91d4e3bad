"""data_prep/rl_prep: validate RL rows (DPO ordering, RLVR verifier fields), split, shard, write manifest.json.

Input files named train/val/validation/test keep their split; otherwise rows are assigned to splits by a
seeded draw. manifest.json lists each split's first shard (NeMo-RL's single-shard convention) plus all
shards, as paths relative to the manifest.
"""

from __future__ import annotations

import json
import random
from contextlib import ExitStack
from itertools import groupby
from pathlib import Path

from nemotron_assets.artifacts.files import TRAIN, data_files
from nemotron_assets.artifacts.jsonl import RecordStream, iter_lines
from nemotron_assets.errors import contract_error
from nemotron_assets.steps import StepResult, StepRun

SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "test": "test"}
RL_SPLITS = ("train", "val", "test")
SHAPES = {"auto": frozenset({"dpo", "rlvr"}), "dpo": frozenset({"dpo"}), "rlvr": frozenset({"rlvr"})}


def labelled_records(run: StepRun, files: list[Path], stream: RecordStream):
    """(split, record) pairs: from file names when every file is named by its split, else a seeded draw."""
    named = {f: SPLIT_NAMES.get(f.stem) for f in files}
    if any(named.values()):
        if not all(named.values()):
            unnamed = [f.name for f, split in named.items() if split is None]
            raise run.error("split_names_do_not_match_rl_config", f"files {unnamed} are not named train/val/test")
        for split, group in groupby(files, key=named.get):
            yield from ((split, record) for record in stream.from_lines(iter_lines(list(group))))
        return
    rng, val, test = random.Random(run.p.split_seed), run.p.val_ratio, run.p.test_ratio
    for record in stream:
        draw = rng.random()
        yield ("test" if draw < test else "val" if draw < test + val else "train"), record


def run(run: StepRun) -> StepResult:
    data = run.input("training_jsonl")
    files = data_files(data.path, (".jsonl",), TRAIN)
    stream = RecordStream(files, SHAPES[run.p.kind], max_rows=run.p.max_rows)
    per_split = run.p.num_shards_per_split
    shard_paths = {
        split: [Path("datasets", f"{data.name}__{split}", f"shard_{k:06d}.jsonl") for k in range(per_split)]
        for split in RL_SPLITS
    }
    rows = dict.fromkeys(RL_SPLITS, 0)
    with ExitStack() as stack:
        handles = {}
        for split, paths in shard_paths.items():
            for path in paths:
                (run.output_dir / path).parent.mkdir(parents=True, exist_ok=True)
            handles[split] = [stack.enter_context((run.output_dir / p).open("w")) for p in paths]
        for split, record in labelled_records(run, files, stream):
            handles[split][rows[split] % per_split].write(json.dumps(record, ensure_ascii=False) + "\n")
            rows[split] += 1
    if stream.records == 0:
        raise contract_error("empty_artifact", f"{data.path}: no RL rows")
    wanted = {"train": True, "val": run.p.val_ratio > 0, "test": run.p.test_ratio > 0}
    for split in RL_SPLITS:
        if rows[split] == 0:
            for path in shard_paths[split]:
                (run.output_dir / path).unlink()
            if wanted[split]:
                raise run.error("empty_split", f"the {split} split got no rows out of {stream.records}")
    manifest = {split: str(shard_paths[split][0]) if rows[split] else "" for split in RL_SPLITS} | {
        "mode": "resolve",
        "kind": stream.shape,
        "source_splits": sorted({s for s in RL_SPLITS if rows[s]}),
        "shards": {split: [str(p) for p in shard_paths[split]] for split in RL_SPLITS if rows[split]},
        "rows": rows,
    }
    (run.output_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return StepResult({"rows": stream.records, "kind": stream.shape} | {f"{s}_rows": n for s, n in rows.items()})
