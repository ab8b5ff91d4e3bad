"""data_prep/pretrain_prep: text JSONL -> Megatron .bin/.idx shards (one sequence per document) + blend.json.

Documents stream through in contiguous row shards and batched Rust encoding; each shard's tokens go straight
to disk, so memory stays flat. blend.json lists shard prefixes relative to itself, each weighted by its
share of the split's tokens, so sampling stays uniform over the corpus; consumers resolve the prefixes.
"""

from __future__ import annotations

import json
from itertools import chain, groupby

import numpy as np

from nemotron_assets.artifacts.binidx import BLEND_FILE, SPLITS, BinIdxWriter
from nemotron_assets.steps import StepResult, StepRun
from nemotron_assets.steps.data_prep.packing import gather_ranges
from nemotron_assets.steps.data_prep.sharding import assign_splits, map_ahead, sharded_input
from nemotron_assets.steps.data_prep.tokenizer import step_tokenizer, tokenizer_provenance

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


def run(run: StepRun) -> StepResult:
    params = run.params
    shards, held_out = params["num_shards"], params["valid_shards"] + params["test_shards"]
    if shards <= held_out:
        raise run.error("split_leakage_or_empty_validation", f"num_shards {shards} <= valid + test shards {held_out}")
    tokenizer = step_tokenizer(run)
    dtype = DTYPES[params["dtype"]]
    if tokenizer.vocab_size > np.iinfo(dtype).max + 1:
        raise run.error("vocab_exceeds_dtype", f"vocabulary {tokenizer.vocab_size} > {params['dtype']}")
    bos = tokenizer.token_id("bos_token") if params["add_bos"] else None
    eos = tokenizer.token_id("eos_token") if params["add_eos"] else None
    for wanted, token_id, name in ((params["add_bos"], bos, "BOS"), (params["add_eos"], eos, "EOS")):
        if wanted and token_id is None:
            raise run.error("tokenizer_mismatch", f"tokenizer {params['tokenizer']!r} has no {name} token")

    batches = sharded_input(run, "filtered_jsonl", frozenset({"text"}), BATCH_DOCS, params["text_field"])
    (run.output_dir / "shards").mkdir()
    shard_tokens: list[int] = []
    documents = truncated = 0
    encoded = map_ahead(lambda batch: tokenizer.encode([doc[params["text_field"]] for doc in batch[1]]), batches)
    for shard, group in groupby(encoded, key=lambda result: result[0][0]):
        writer = BinIdxWriter(run.output_dir / "shards" / f"shard_{shard:06d}", dtype)
        for _, ids in group:
            tokens, lengths = with_specials(ids, bos, eos, params["max_doc_tokens"])
            if params["max_doc_tokens"] is not None:
                truncated += sum(len(x) + (bos is not None) + (eos is not None) > params["max_doc_tokens"] for x in ids)
            writer.add(tokens, lengths)
        shard_docs, tokens_in_shard = writer.close()
        documents += shard_docs
        shard_tokens.append(tokens_in_shard)
    if sum(shard_tokens) == 0:
        raise run.error("empty_or_overlong_documents", f"{documents} documents, no tokens")

    splits = assign_splits(shards, params["valid_shards"], params["test_shards"], params["split_seed"])
    blend: dict[str, list[str]] = {}
    for split in SPLITS:
        total = sum(shard_tokens[k] for k in splits[split])
        if splits[split] and total == 0:
            raise run.error("split_leakage_or_empty_validation", f"the {split} split has no tokens")
        blend[split] = [v for k in splits[split] for v in (f"{shard_tokens[k] / total:.6g}", f"shards/shard_{k:06d}")]
    (run.output_dir / BLEND_FILE).write_text(json.dumps({s: v for s, v in blend.items() if v}, indent=1))
    stats = {
        "rows": documents,
        "documents": documents,
        "tokens": sum(shard_tokens),
        "truncated": truncated,
        "shards": shards,
        "dtype": params["dtype"],
    } | {f"{split}_shards": len(splits[split]) for split in SPLITS}
    return StepResult(stats, tokenizer_provenance(tokenizer))
