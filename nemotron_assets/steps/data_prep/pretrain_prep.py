"""data_prep/pretrain_prep: text JSONL -> Megatron .bin/.idx shards (one sequence per document) + blend.json.

The input is cut into contiguous row shards; each shard is read from its own position, validated, encoded in
batches by the Rust tokenizer and written straight to its .bin/.idx, so memory stays flat. Workers (workers.py:
processes for the profile's CPUs, Ray tasks across its nodes), each with its own tokenizer, take whole shards; the
parent merges their counts in shard order, so the artifact does not depend on the number of workers. blend.json lists
shard prefixes relative to itself, each weighted by its share of the split's tokens, so sampling stays uniform over
the corpus; consumers resolve the prefixes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np

from nemotron_assets.artifacts.binidx import BLEND_FILE, SPLITS, BinIdxWriter
from nemotron_assets.artifacts.jsonl import RecordStream
from nemotron_assets.steps import StepResult, StepRun
from nemotron_assets.steps.data_prep.packing import gather_ranges
from nemotron_assets.steps.data_prep.sharding import ShardRows, assign_splits, batched, input_shards, map_ahead
from nemotron_assets.steps.data_prep.tokenizer import Tokenizer, step_tokenizer, tokenizer_provenance
from nemotron_assets.steps.data_prep.workers import map_shards

BATCH_DOCS = 512
DTYPES = {"uint16": np.uint16, "int32": np.int32}


def with_specials(
    ids: list[list[int]], bos: int | None, eos: int | None, max_tokens: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Flat tokens and per-document lengths with BOS/EOS placed, documents truncated to `max_tokens`."""
    extra = (bos is not None) + (eos is not None)
    content = np.fromiter(map(len, ids), np.int64, len(ids))
    flat = np.fromiter(chain.from_iterable(ids), np.int64, int(content.sum()))
    kept = content if max_tokens is None else np.minimum(content, max(max_tokens - extra, 0))
    if (kept < content).any():
        flat = flat[gather_ranges(np.cumsum(content) - content, kept)]
    lengths = kept + extra
    starts = np.cumsum(lengths) - lengths
    tokens = np.empty(int(lengths.sum()), np.int64)
    tokens[gather_ranges(starts + (bos is not None), kept)] = flat
    if bos is not None:
        tokens[starts] = bos
    if eos is not None:
        tokens[starts + lengths - 1] = eos
    return tokens, lengths


@dataclass(frozen=True)
class ShardEncoding:
    """How every shard is encoded; picklable, for worker processes."""

    tokenizer: str
    text_field: str
    dtype: str
    bos: int | None
    eos: int | None
    max_tokens: int | None


def encode_shard(tokenizer: Tokenizer, encoding: ShardEncoding, rows: ShardRows, prefix: Path) -> tuple[int, int, int]:
    """Validate, encode and write one shard to `prefix`.bin/.idx; return its (documents, tokens, truncated)."""
    extra = (encoding.bos is not None) + (encoding.eos is not None)
    records = RecordStream([], frozenset({"text"}), encoding.text_field).from_lines(rows.lines())
    writer = BinIdxWriter(prefix, DTYPES[encoding.dtype])
    truncated = 0
    texts = (([doc[encoding.text_field] for doc in batch]) for batch in batched(records, BATCH_DOCS))
    for _, ids in map_ahead(tokenizer.encode, texts):
        writer.add(*with_specials(ids, encoding.bos, encoding.eos, encoding.max_tokens))
        if encoding.max_tokens is not None:
            truncated += sum(len(x) + extra > encoding.max_tokens for x in ids)
    return *writer.close(), truncated


def run(run: StepRun) -> StepResult:
    shards, held_out = run.p.num_shards, run.p.valid_shards + run.p.test_shards
    if shards <= held_out:
        raise run.error("split_leakage_or_empty_validation", f"num_shards {shards} <= valid + test shards {held_out}")
    tokenizer = step_tokenizer(run)
    dtype = DTYPES[run.p.dtype]
    if tokenizer.vocab_size > np.iinfo(dtype).max + 1:
        raise run.error("vocab_exceeds_dtype", f"vocabulary {tokenizer.vocab_size} > {run.p.dtype}")
    bos = tokenizer.token_id("bos_token") if run.p.add_bos else None
    eos = tokenizer.token_id("eos_token") if run.p.add_eos else None
    for wanted, token_id, name in ((run.p.add_bos, bos, "BOS"), (run.p.add_eos, eos, "EOS")):
        if wanted and token_id is None:
            raise run.error("tokenizer_mismatch", f"tokenizer {run.p.tokenizer!r} has no {name} token")

    shard_rows = input_shards(run, "filtered_jsonl")
    (run.output_dir / "shards").mkdir()
    prefixes = [f"shards/shard_{k:06d}" for k in range(shards)]
    encoding = ShardEncoding(run.p.tokenizer, run.p.text_field, run.p.dtype, bos, eos, run.p.max_doc_tokens)
    jobs = [(rows, run.output_dir / prefix) for rows, prefix in zip(shard_rows, prefixes, strict=True)]
    counts = map_shards(run, encode_shard, encoding, tokenizer, jobs)
    documents, truncated = sum(c[0] for c in counts), sum(c[2] for c in counts)
    shard_tokens = [c[1] for c in counts]
    if sum(shard_tokens) == 0:
        raise run.error("empty_or_overlong_documents", f"{documents} documents, no tokens")

    splits = assign_splits(shards, run.p.valid_shards, run.p.test_shards, run.p.split_seed)
    blend: dict[str, list[str]] = {}
    for split in SPLITS:
        total = sum(shard_tokens[k] for k in splits[split])
        if splits[split] and total == 0:
            raise run.error("split_leakage_or_empty_validation", f"the {split} split has no tokens")
        blend[split] = [v for k in splits[split] for v in (f"{shard_tokens[k] / total:.6g}", prefixes[k])]
    (run.output_dir / BLEND_FILE).write_text(json.dumps({s: v for s, v in blend.items() if v}, indent=1))
    stats = {
        "rows": documents,
        "documents": documents,
        "tokens": sum(shard_tokens),
        "truncated": truncated,
        "shards": shards,
        "dtype": run.p.dtype,
    } | {f"{split}_shards": len(splits[split]) for split in SPLITS}
    return StepResult(stats, tokenizer_provenance(tokenizer))
