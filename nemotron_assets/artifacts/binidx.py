"""binidx: Megatron MMIDIDX token shards (.bin/.idx) and the per-split blend.json that lists them.

The index layout is megatron-core's IndexedDataset format: magic, version 1, dtype code, sequence and
document counts, int32 sequence lengths, int64 byte pointers, int64 document indices ([0, ..., n]).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from nemotron_assets.artifacts.files import read_json
from nemotron_assets.errors import contract_error

MAGIC = b"MMIDIDX\x00\x00"
HEADER = struct.Struct("<9sQBQQ")
DTYPE_CODES: dict[type[np.integer], int] = {
    np.uint8: 1,
    np.int8: 2,
    np.int16: 3,
    np.int32: 4,
    np.int64: 5,
    np.uint16: 8,
}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}
SPLITS = ("train", "valid", "test")
BLEND_FILE = "blend.json"


class BinIdxWriter:
    """Streams documents into `<prefix>.bin` and writes `<prefix>.idx` on close; one sequence per document."""

    def __init__(self, prefix: Path, dtype: type[np.integer]):
        self.prefix, self.dtype = prefix, np.dtype(dtype)
        self._bin: BinaryIO = open(f"{prefix}.bin", "wb")  # noqa: SIM115 (stays open across add() calls)
        self._lengths: list[np.ndarray] = []

    def add(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append documents given as one flat token array and their lengths."""
        self._bin.write(tokens.astype(self.dtype, copy=False).tobytes())
        self._lengths.append(lengths.astype(np.int32, copy=False))

    def close(self) -> tuple[int, int]:
        """Write the index; return (documents, tokens)."""
        self._bin.close()
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int32)
        pointers = np.zeros(len(lengths), np.int64)
        np.cumsum(lengths[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        documents = np.arange(len(lengths) + 1, dtype=np.int64)
        with open(f"{self.prefix}.idx", "wb") as f:
            f.write(HEADER.pack(MAGIC, 1, DTYPE_CODES[self.dtype.type], len(lengths), len(documents)))
            f.write(lengths.tobytes())
            f.write(pointers.tobytes())
            f.write(documents.tobytes())
        return len(lengths), int(lengths.sum(dtype=np.int64))


@dataclass(frozen=True)
class Index:
    dtype: np.dtype
    lengths: np.ndarray
    pointers: np.ndarray
    document_indices: np.ndarray


def read_index(prefix: Path) -> Index:
    """Parse and cross-check a .idx against its .bin; corrupt_binidx on any inconsistency."""
    idx, bin_ = Path(f"{prefix}.idx"), Path(f"{prefix}.bin")
    if not idx.exists() or not bin_.exists():
        raise contract_error("corrupt_binidx", f"{prefix}: .bin or .idx missing")
    data = idx.read_bytes()
    if len(data) < HEADER.size:
        raise contract_error("corrupt_binidx", f"{idx}: truncated header ({len(data)} bytes)")
    magic, version, code, n_seq, n_doc = HEADER.unpack_from(data)
    if magic != MAGIC or version != 1 or code not in CODE_DTYPES:
        raise contract_error("corrupt_binidx", f"{idx}: bad magic, version or dtype code")
    expected = HEADER.size + 4 * n_seq + 8 * n_seq + 8 * n_doc
    if len(data) != expected:
        raise contract_error("corrupt_binidx", f"{idx}: {len(data)} bytes, expected {expected} for {n_seq} sequences")
    lengths = np.frombuffer(data, np.int32, n_seq, HEADER.size)
    pointers = np.frombuffer(data, np.int64, n_seq, HEADER.size + 4 * n_seq)
    documents = np.frombuffer(data, np.int64, n_doc, HEADER.size + 12 * n_seq)
    dtype = np.dtype(CODE_DTYPES[code])
    ends = pointers + lengths.astype(np.int64) * dtype.itemsize
    if n_seq and (pointers[0] != 0 or np.any(pointers[1:] != ends[:-1]) or (lengths < 0).any()):
        raise contract_error("corrupt_binidx", f"{idx}: sequence pointers do not follow the lengths")
    bin_size = int(ends[-1]) if n_seq else 0
    if bin_.stat().st_size != bin_size:
        raise contract_error("corrupt_binidx", f"{bin_}: {bin_.stat().st_size} bytes, index expects {bin_size}")
    if n_doc == 0 or documents[0] != 0 or documents[-1] != n_seq or np.any(np.diff(documents) < 0):
        raise contract_error("corrupt_binidx", f"{idx}: document indices are not a [0 .. {n_seq}] ramp")
    return Index(dtype, lengths, pointers, documents)


def document_lengths(index: Index) -> np.ndarray:
    """Tokens per document (a document spans the sequences between two document indices)."""
    ends = np.concatenate([[0], np.cumsum(index.lengths, dtype=np.int64)])
    return ends[index.document_indices[1:]] - ends[index.document_indices[:-1]]


def window_count(prefixes: list[Path], length: int) -> int:
    """How many windows `windows` yields, from the indexes alone."""
    lengths = np.concatenate([document_lengths(read_index(prefix)) for prefix in prefixes])
    return int((lengths // length).sum() + (lengths % length >= 2).sum())


def windows(prefixes: list[Path], length: int) -> Iterator[np.ndarray]:
    """Each document's tokens in windows of `length` (a last window of one token, nothing to predict, dropped),
    shard by shard, read through a memory map."""
    for prefix in prefixes:
        index = read_index(prefix)
        tokens = np.memmap(f"{prefix}.bin", dtype=index.dtype, mode="r")
        start = 0
        for size in document_lengths(index):
            for offset in range(0, int(size), length):
                if min(length, size - offset) >= 2:
                    yield np.array(tokens[start + offset : start + min(offset + length, size)], dtype=np.int64)
            start += int(size)


def read_blend(path: Path) -> dict[str, list[tuple[float, Path]]]:
    """Parse blend.json into {split: [(weight, prefix), ...]}; prefixes relative to the blend's directory."""
    raw = read_json(path, "missing_or_invalid_blend")
    if not isinstance(raw, dict) or not raw.get("train") or set(raw) - set(SPLITS):
        raise contract_error("missing_or_invalid_blend", f"{path}: needs a non-empty `train` and only {SPLITS}")
    blend: dict[str, list[tuple[float, Path]]] = {}
    for split, flat in raw.items():
        if not isinstance(flat, list) or len(flat) % 2:
            raise contract_error(
                "missing_or_invalid_blend", f"{path}: `{split}` is not a flat [weight, prefix, ...] list"
            )
        try:
            pairs = [(float(w), path.parent / p) for w, p in zip(flat[::2], flat[1::2], strict=True)]
        except (TypeError, ValueError):
            raise contract_error("missing_or_invalid_blend", f"{path}: `{split}` has a non-numeric weight") from None
        if any(w <= 0 for w, _ in pairs):
            raise contract_error("missing_or_invalid_blend", f"{path}: `{split}` has a non-positive weight")
        blend[split] = pairs
    return blend


def validate_binidx(path: Path) -> dict[str, Any]:
    """Contract of a binidx artifact: blend.json is well formed and every shard it names is intact."""
    blend_path = path / BLEND_FILE if path.is_dir() else path
    if not blend_path.exists():
        raise contract_error("missing_or_invalid_blend", f"{path}: no {BLEND_FILE}")
    stats: dict[str, Any] = {"shards": 0, "documents": 0, "tokens": 0}
    for split, pairs in read_blend(blend_path).items():
        documents = tokens = 0
        for _, prefix in pairs:
            index = read_index(prefix)
            documents += len(index.document_indices) - 1
            tokens += int(index.lengths.sum(dtype=np.int64))
        stats[f"{split}_shards"], stats[f"{split}_documents"], stats[f"{split}_tokens"] = len(pairs), documents, tokens
        stats["shards"] += len(pairs)
        stats["documents"] += documents
        stats["tokens"] += tokens
    return stats
