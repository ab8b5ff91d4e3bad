"""data_prep/sft_packing: chat JSONL -> assistant-masked, packed Parquet bins for Megatron-Bridge.

Per conversation: render with the chat template, split into context and assistant segments, encode the
segments in parallel batches, mask = 1 on assistant tokens, truncate, then shift the mask one left so
`loss_mask[j]` says whether the label `input_ids[j + 1]` is trained (Megatron-Bridge's packed loader takes
tokens = ids[s:e-1], labels = ids[s+1:e], mask = loss_mask[s:e-1]). Sequences are packed in bounded
windows per contiguous row shard, so memory stays flat however large the corpus is. Whole shards go to workers
(workers.py: processes for the profile's CPUs, Ray tasks across its nodes), each with its own tokenizer; their
counts merge in shard order, so the artifact does not depend on the number of workers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np

from nemotron_assets.artifacts.jsonl import RecordStream
from nemotron_assets.artifacts.packed_parquet import SPLITS, arrow_schema
from nemotron_assets.errors import step_error
from nemotron_assets.steps import StepResult, StepRun
from nemotron_assets.steps.data_prep.chat_template import ChatTemplate, TemplateError, resolve_template_source
from nemotron_assets.steps.data_prep.packing import gather_ranges, pack
from nemotron_assets.steps.data_prep.sharding import (
    ShardRows,
    assign_splits,
    batched,
    held_out_counts,
    input_shards,
    map_ahead,
)
from nemotron_assets.steps.data_prep.tokenizer import Tokenizer, step_tokenizer, tokenizer_provenance
from nemotron_assets.steps.data_prep.workers import map_shards

BATCH_ROWS = 256
WINDOW_TOKENS = 1 << 22  # pack at most ~4M tokens at a time (tens of MB), whatever the shard size


@dataclass
class Sequences:
    """Tokenized, masked, truncated conversations of one batch, concatenated."""

    ids: np.ndarray
    mask: np.ndarray
    lengths: np.ndarray


@dataclass
class Counters:
    rows: int = 0
    sequences: int = 0
    dropped_rows: int = 0
    truncated: int = 0
    bins: int = 0
    tokens: int = 0
    trainable_tokens: int = 0
    shard_bins: list[int] = field(default_factory=list)

    @classmethod
    def merged(cls, shards: list[Counters]) -> Counters:
        """The counts of shards, in shard order."""
        total = cls()
        for shard in shards:
            for name, value in vars(shard).items():
                setattr(total, name, getattr(total, name) + value)
        return total


@dataclass(frozen=True)
class PackSpec:
    """How every shard is rendered, encoded and packed; picklable, for workers."""

    step: str
    tokenizer: str
    template: str
    messages_field: str
    max_len: int
    pack_size: int
    algorithm: str
    seed: int
    compression: str
    row_group_size: int


Segments = list[list[tuple[str, bool]]]


def render_batches(
    batches: Iterable[list], spec: PackSpec, template: ChatTemplate
) -> Iterator[tuple[Segments, list[str]]]:
    """Each batch of conversations as (text, is_assistant) segments per row, and those texts in order."""
    for batch in batches:
        try:
            segments = [template.segments(record[spec.messages_field]) for record in batch]
        except TemplateError as e:
            raise step_error(spec.step, "bad_loss_masks", f"chat template rejected a conversation: {e}") from None
        yield segments, [text for row in segments for text, _ in row]


def assemble(segments: Segments, ids_per_segment: list[list[int]], max_len: int, counters: Counters) -> Sequences:
    """Concatenate a batch's encoded segments per row, mask, truncate, label-align; drop rows with nothing to train."""
    seg_lengths = np.fromiter(map(len, ids_per_segment), np.int64, len(ids_per_segment))
    seg_trainable = np.fromiter((t for row in segments for _, t in row), np.uint8, len(ids_per_segment))
    ids = np.fromiter(chain.from_iterable(ids_per_segment), np.int32, int(seg_lengths.sum()))
    mask = np.repeat(seg_trainable, seg_lengths)

    seg_counts = np.fromiter(map(len, segments), np.int64, len(segments))
    row_ends = np.cumsum(seg_lengths)[np.cumsum(seg_counts) - 1]
    row_lengths = np.diff(row_ends, prepend=0)
    kept = np.minimum(row_lengths, max_len)
    if (kept < row_lengths).any():
        keep = gather_ranges(row_ends - row_lengths, kept)
        ids, mask = ids[keep], mask[keep]
    aligned = np.zeros_like(mask)
    aligned[:-1] = mask[1:]
    ends = np.cumsum(kept)
    aligned[ends - 1] = 0
    trainable = np.add.reduceat(aligned, ends - kept, dtype=np.int64)

    counters.rows += len(segments)
    counters.truncated += int((row_lengths > max_len).sum())
    good = trainable > 0
    counters.dropped_rows += int((~good).sum())
    if not good.all():
        keep = gather_ranges(ends[good] - kept[good], kept[good])
        ids, aligned, kept = ids[keep], aligned[keep], kept[good]
    return Sequences(ids, aligned, kept)


def write_bins(writer, sequences: Sequences, spec: PackSpec, counters: Counters) -> None:
    """Pack one window of sequences and append its bins to the shard's Parquet file."""
    import pyarrow as pa

    if not len(sequences.lengths):
        return
    bins = pack(sequences.lengths, spec.pack_size, spec.algorithm, spec.seed)
    order = np.fromiter(chain.from_iterable(bins), np.int64, len(sequences.lengths))
    lengths = sequences.lengths[order]
    starts = (np.cumsum(sequences.lengths) - sequences.lengths)[order]
    take = gather_ranges(starts, lengths)
    per_bin = np.fromiter(map(len, bins), np.int64, len(bins))
    bin_seq_offsets = np.concatenate([[0], np.cumsum(per_bin)])
    seq_offsets = np.cumsum(lengths) - lengths
    bin_token_offsets = np.concatenate([[0], np.cumsum(lengths)])[bin_seq_offsets]
    seq_start_id = (seq_offsets - np.repeat(bin_token_offsets[:-1], per_bin)).astype(np.int32)

    token_offsets = pa.array(bin_token_offsets.astype(np.int32))
    table = pa.Table.from_arrays(
        [
            pa.ListArray.from_arrays(token_offsets, pa.array(sequences.ids[take])),
            pa.ListArray.from_arrays(token_offsets, pa.array(sequences.mask[take])),
            pa.ListArray.from_arrays(pa.array(bin_seq_offsets.astype(np.int32)), pa.array(seq_start_id)),
        ],
        schema=arrow_schema(),
    )
    writer.write_table(table, row_group_size=spec.row_group_size)
    counters.bins += len(bins)
    counters.sequences += len(lengths)
    counters.tokens += int(lengths.sum())
    counters.trainable_tokens += int(sequences.mask.sum(dtype=np.int64))


class ShardPacker:
    """Packs one shard's sequences, in windows of bounded size, into its Parquet file."""

    def __init__(self, path: Path, spec: PackSpec, counters: Counters):
        import pyarrow.parquet as pq

        codec = spec.compression
        # Dictionary-encoding token ids (tens of thousands of distinct values) costs more time than it saves space.
        self.writer = pq.ParquetWriter(
            path, arrow_schema(), compression=None if codec == "none" else codec, use_dictionary=False
        )
        self.spec, self.counters = spec, counters
        self.window: list[Sequences] = []
        self.window_tokens = 0
        self.bins_before = counters.bins

    def add(self, sequences: Sequences) -> None:
        self.window.append(sequences)
        self.window_tokens += len(sequences.ids)
        if self.window_tokens >= WINDOW_TOKENS:
            self._flush()

    def _flush(self) -> None:
        if self.window:
            write_bins(self.writer, _concat(self.window), self.spec, self.counters)
            self.window, self.window_tokens = [], 0

    def close(self) -> None:
        self._flush()
        self.writer.close()
        self.counters.shard_bins.append(self.counters.bins - self.bins_before)


def pack_shard(tokenizer: Tokenizer, spec: PackSpec, rows: ShardRows, path: Path) -> Counters:
    """Validate, render, encode, mask and pack one row shard into its Parquet file; return its counts. Rust encoding
    runs one batch ahead in a background thread, overlapped with parsing, rendering, masking, packing and writing."""
    template = ChatTemplate(spec.template, tokenizer.special_tokens)
    records = RecordStream([], frozenset({"chat"})).from_lines(rows.lines())
    counters = Counters()
    packer = ShardPacker(path, spec, counters)
    rendered = render_batches(batched(records, BATCH_ROWS), spec, template)
    for (segments, _), ids in map_ahead(lambda batch: tokenizer.encode(batch[1]), rendered):
        packer.add(assemble(segments, ids, spec.max_len, counters))
    packer.close()
    return counters


def _concat(window: list[Sequences]) -> Sequences:
    return Sequences(*(np.concatenate([getattr(s, f) for s in window]) for f in ("ids", "mask", "lengths")))


def link_splits(output: Path, dataset: str, splits: dict[str, list[int]]) -> None:
    """splits/<split>/<pos>__<dataset>__shard_<k>.parquet -> ../../shards/shard_<k>.parquet (relative links)."""
    for split in SPLITS:
        directory = output / "splits" / split
        directory.mkdir(parents=True)
        for position, shard in enumerate(splits[split]):
            name = f"shard_{shard:06d}.parquet"
            os.symlink(Path("..", "..", "shards", name), directory / f"{position:06d}__{dataset}__{name}")


def run(run: StepRun) -> StepResult:
    ratios = (run.p.train_ratio, run.p.valid_ratio, run.p.test_ratio)
    if abs(sum(ratios) - 1) > 1e-6 or not all(0 <= r <= 1 for r in ratios):
        raise run.error("invalid_split_ratios", f"train/valid/test = {ratios}")
    tokenizer = step_tokenizer(run)
    source = resolve_template_source(run.p.chat_template, tokenizer.chat_template)
    if source is None:
        raise run.error(
            "chat_template_missing", f"tokenizer {run.p.tokenizer!r}, chat_template={run.p.chat_template!r}"
        )
    template = ChatTemplate(source, tokenizer.special_tokens)

    shard_rows = input_shards(run, "training_jsonl")
    spec = PackSpec(
        run.step.id,
        run.p.tokenizer,
        source,
        run.p.messages_field,
        min(run.p.max_doc_tokens or run.p.pack_size, run.p.pack_size),
        run.p.pack_size,
        run.p.algorithm,
        run.p.seed,
        run.p.parquet_compression,
        run.p.parquet_row_group_size,
    )
    (run.output_dir / "shards").mkdir()
    jobs = [(rows, run.output_dir / "shards" / f"shard_{k:06d}.parquet") for k, rows in enumerate(shard_rows)]
    counters = Counters.merged(map_shards(run, pack_shard, spec, tokenizer, jobs))
    if counters.trainable_tokens == 0:
        raise run.error("bad_loss_masks", f"{counters.rows} rows, none with a trainable assistant token")

    shards = run.p.num_shards
    valid, test = held_out_counts(shards, run.p.valid_ratio, run.p.test_ratio)
    splits = assign_splits(shards, valid, test, run.p.seed)
    link_splits(run.output_dir, run.input("training_jsonl").name, splits)
    pack_size = run.p.pack_size
    stats = {
        "rows": counters.rows,
        "sequences": counters.sequences,
        "dropped_rows": counters.dropped_rows,
        "truncated": counters.truncated,
        "bins": counters.bins,
        "tokens": counters.tokens,
        "trainable_tokens": counters.trainable_tokens,
        "packing_efficiency": round(100 * counters.tokens / (counters.bins * pack_size), 3),
        "packing_lower_bound_efficiency": round(
            100 * counters.tokens / (-(-counters.tokens // pack_size) * pack_size), 3
        ),
        "packing_factor": round(counters.sequences / counters.bins, 3),
        "shards": shards,
        "empty_shards": counters.shard_bins.count(0),
    } | {f"{split}_shards": len(ids) for split, ids in splits.items()}
    return StepResult(stats, tokenizer_provenance(tokenizer, template))
