"""data_prep/blend: every data drop's bin/idx shards, hard-linked into one binidx with a regenerated blend.json.

Each drop keeps the split assignment its pretrain_prep made; a split's weights are recomputed over all drops,
each shard weighted by its share of the split's tokens, so sampling stays uniform over the whole corpus.
"""

from __future__ import annotations

import json

import numpy as np

from nemotron_assets.artifacts.binidx import BLEND_FILE, SPLITS, read_blend, read_index
from nemotron_assets.artifacts.files import link_or_copy, read_provenance
from nemotron_assets.steps import StepResult, StepRun


def run(run: StepRun) -> StepResult:
    corpus = run.input("binidx")
    drops = corpus.parts or (corpus,)
    tokenizers = {drop.name: (read_provenance(drop.path) or {}).get("tokenizer") or {} for drop in drops}
    fingerprints = {name: tokenizer.get("fingerprint") for name, tokenizer in tokenizers.items()}
    if len(set(fingerprints.values())) > 1:
        raise run.error("tokenizer_mismatch", f"drops tokenized with different tokenizers: {fingerprints}")
    shards: dict[str, list[tuple[str, int]]] = {split: [] for split in SPLITS}
    for drop in drops:
        (run.output_dir / "shards" / drop.name).mkdir(parents=True)
        for split, pairs in read_blend(drop.path / BLEND_FILE).items():
            for _, prefix in pairs:
                target = f"shards/{drop.name}/{prefix.name}"
                for suffix in (".bin", ".idx"):
                    link_or_copy(prefix.with_name(prefix.name + suffix), run.output_dir / f"{target}{suffix}")
                shards[split].append((target, int(read_index(prefix).lengths.sum(dtype=np.int64))))
    blend = {
        split: [v for prefix, tokens in pairs for v in (f"{tokens / sum(t for _, t in pairs):.6g}", prefix)]
        for split, pairs in shards.items()
        if pairs
    }
    (run.output_dir / BLEND_FILE).write_text(json.dumps(blend, indent=1))
    stats = {"drops": len(drops), "tokens": sum(t for pairs in shards.values() for _, t in pairs)}
    provenance = {"tokenizer": tokenizers[drops[0].name]}
    return StepResult(stats | {f"{split}_shards": len(pairs) for split, pairs in shards.items()}, provenance)
