"""Row counting, contiguous row shards, and the assignment of whole shards to train/valid/test."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import TypeVar

from nemotron_assets.artifacts.files import TRAIN, data_files
from nemotron_assets.artifacts.jsonl import RecordStream
from nemotron_assets.errors import contract_error
from nemotron_assets.steps import StepRun

T = TypeVar("T")
R = TypeVar("R")

SPLITS = ("train", "valid", "test")


def count_rows(files: Iterable[Path], limit: int | None = None) -> int:
    """Non-blank lines across files, stopping at `limit`."""
    rows = 0
    for path in files:
        with path.open("rb") as f:
            for line in f:
                if line.strip():
                    rows += 1
                    if limit is not None and rows >= limit:
                        return rows
    return rows


def shard_sizes(rows: int, shards: int) -> list[int]:
    """Rows per contiguous shard, as even as possible."""
    return [rows * (k + 1) // shards - rows * k // shards for k in range(shards)]


def batched(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of `size` items (the last may be shorter)."""
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def map_ahead(fn: Callable[[T], R], items: Iterable[T]) -> Iterator[tuple[T, R]]:
    """(item, fn(item)) in order, with fn(item) running in a background thread while the caller consumes the
    previous result and the next item is produced: overlaps GIL-free work (Rust encoding) with Python work."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = None
        for item in items:
            future = pool.submit(fn, item)
            if pending is not None:
                yield pending[0], pending[1].result()
            pending = (item, future)
        if pending is not None:
            yield pending[0], pending[1].result()


def sharded_batches(items: Iterable[T], sizes: list[int], batch_size: int) -> Iterator[tuple[int, list[T]]]:
    """(shard, batch): one stream cut into consecutive shards of the given sizes, in batches within a shard."""
    iterator = iter(items)
    for shard, size in enumerate(sizes):
        for batch in batched(islice(iterator, size), batch_size):
            yield shard, batch


def sharded_input(run: StepRun, port: str, shapes: frozenset[str], batch_size: int, text_field: str = "text"):
    """(shard, batch of validated records) over a step's JSONL input, cut into `num_shards` contiguous shards.

    Raises empty_artifact for an input without records and the step's too_many_tiny_shards when there are
    fewer records than shards.
    """
    params = run.params
    files = data_files(run.input(port).path, (".jsonl",), TRAIN)
    rows, shards = count_rows(files, params["max_rows"]), params["num_shards"]
    if rows == 0:
        raise contract_error("empty_artifact", f"{run.input(port).path}: no records")
    if rows < shards:
        raise run.error("too_many_tiny_shards", f"{rows} records cannot fill {shards} shards")
    stream = RecordStream(files, shapes, text_field, params["max_rows"])
    return sharded_batches(stream, shard_sizes(rows, shards), batch_size)


def held_out_counts(shards: int, valid_ratio: float, test_ratio: float) -> tuple[int, int]:
    """Validation and test shard counts from ratios: at least one when asked for, none with <= 2 shards."""
    if shards <= 2:
        return 0, 0
    valid = max(1, round(shards * valid_ratio)) if valid_ratio > 0 else 0
    test = max(1, round(shards * test_ratio)) if test_ratio > 0 else 0
    while valid + test >= shards:
        if valid >= test and valid:
            valid -= 1
        else:
            test -= 1
    return valid, test


def assign_splits(shards: int, valid: int, test: int, seed: int) -> dict[str, list[int]]:
    """Seeded shuffle of shard indices: the first `test` go to test, the next `valid` to valid, the rest train."""
    order = list(range(shards))
    random.Random(seed).shuffle(order)
    return {
        "train": sorted(order[test + valid :]),
        "valid": sorted(order[test : test + valid]),
        "test": sorted(order[:test]),
    }
