"""Contiguous row shards that a worker can seek to, and the assignment of whole shards to train/valid/test."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice, pairwise
from pathlib import Path
from typing import TypeVar

from nemotron_assets.artifacts.files import TRAIN, data_files
from nemotron_assets.artifacts.jsonl import iter_lines
from nemotron_assets.errors import contract_error
from nemotron_assets.steps import StepRun

T = TypeVar("T")
R = TypeVar("R")

SPLITS = ("train", "valid", "test")
MAX_MARKS = 1 << 16  # line positions kept while cutting shards


@dataclass(frozen=True)
class ShardRows:
    """One contiguous row shard of JSONL files: from `start` (file index, byte offset, line number of a non-blank
    line), skip `skip` non-blank lines of earlier shards, then take `rows`. Picklable, for worker processes."""

    files: tuple[Path, ...]
    start: tuple[int, int, int]
    skip: int
    rows: int

    def lines(self) -> Iterator[tuple[str, bytes]]:
        """(`file:line`, raw line) of the shard's rows, read from its start without the lines before it."""
        return islice(iter_lines(self.files, self.start), self.skip, self.skip + self.rows)


def line_starts(files: list[Path]) -> Iterator[tuple[int, int, int]]:
    """(file index, byte offset, line number) of every non-blank line."""
    for index, path in enumerate(files):
        offset = 0
        with path.open("rb") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield index, offset, lineno
                offset += len(line)


def row_shards(files: list[Path], shards: int, limit: int | None = None) -> list[ShardRows]:
    """The first `limit` non-blank lines of `files` cut into `shards` contiguous shards, in one pass.

    The pass keeps where every `stride`-th line starts, dropping every other mark and doubling the stride when
    MAX_MARKS are kept: memory stays bounded and a shard skips fewer than 2 * rows / MAX_MARKS lines to its own.
    """
    rows, stride, marks = 0, 1, []
    for position in islice(line_starts(files), limit):
        if rows % stride == 0:
            marks.append(position)
            if len(marks) == MAX_MARKS:
                marks, stride = marks[::2], stride * 2
        rows += 1
    if rows == 0:
        return []
    starts = [rows * k // shards for k in range(shards + 1)]
    return [ShardRows(tuple(files), marks[a // stride], a % stride, b - a) for a, b in pairwise(starts)]


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


def input_shards(run: StepRun, port: str) -> list[ShardRows]:
    """A step's JSONL input cut into `num_shards` contiguous row shards (`max_rows` at most).

    Raises empty_artifact for an input without records and the step's too_many_tiny_shards when there are
    fewer records than shards.
    """
    files = data_files(run.input(port).path, (".jsonl",), TRAIN)
    shards = row_shards(files, run.p.num_shards, run.p.max_rows)
    rows = sum(shard.rows for shard in shards)
    if rows == 0:
        raise contract_error("empty_artifact", f"{run.input(port).path}: no records")
    if rows < run.p.num_shards:
        raise run.error("too_many_tiny_shards", f"{rows} records cannot fill {run.p.num_shards} shards")
    return shards


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
