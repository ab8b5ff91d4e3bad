"""Locating an artifact's files and recognising what kind of artifact a path holds."""

from __future__ import annotations

import glob
import json
import os
import shutil
from pathlib import Path
from typing import Any

from nemotron_assets.errors import contract_error

PROVENANCE_FILE = "provenance.json"
SPLITS_DIR = "splits"  # a split artifact's splits/<name>/: training reads TRAIN, evaluation HELD_OUT
TRAIN, HELD_OUT = "train", "test"

# File signatures of the artifact families, for telling a user what they passed instead.
_SIGNATURES: tuple[tuple[str, str], ...] = (
    ("adapter_config.json", "checkpoint_lora"),
    ("*.distcp", "checkpoint_megatron"),
    ("config.json", "checkpoint_hf"),
    ("blend.json", "binidx"),
    ("*.idx", "binidx"),
    ("*.parquet", "packed_parquet"),
    ("*.jsonl", "training_jsonl"),
)


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link `source` as `target` (multi-GB weights are not copied within one filesystem), else copy it."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def overlaps(a: Path, b: Path) -> bool:
    """Whether two paths are the same directory or one lies inside the other."""
    a, b = a.resolve(), b.resolve()
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def read_provenance(path: Path) -> dict[str, Any] | None:
    candidate = path / PROVENANCE_FILE if path.is_dir() else None
    if candidate is None or not candidate.exists():
        return None
    provenance = read_json(candidate, "corrupt_file")
    if not isinstance(provenance, dict) or not isinstance(provenance.get("type"), str):
        raise contract_error("corrupt_file", f"{candidate}: not a provenance record (a JSON object with a `type`)")
    return provenance


def tokenizer_fingerprint(path: Path) -> str | None:
    """The fingerprint of the tokenizer the artifact at `path` was made with, where its provenance records one."""
    return ((read_provenance(path) or {}).get("tokenizer") or {}).get("fingerprint")


def read_json(path: Path, error: str) -> Any:
    """A JSON file's document, or the named `error` when it is missing, unreadable, not UTF-8 or not JSON."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise contract_error(error, f"{path.parent}: no {path.name}") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise contract_error(error, f"{path}: not readable JSON ({type(e).__name__}: {str(e)[:200]})") from None


def read_parquet(path: Path, error: str = "corrupt_file", **options: Any) -> Any:
    """A Parquet file as a pyarrow Table, or the named `error` when it is not a readable Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, **options)
    except (pa.ArrowException, OSError) as e:
        raise contract_error(error, f"{path}: not a readable Parquet file ({str(e)[:200]})") from None


def sniff_type(path: Path) -> str | None:
    """The artifact type a path looks like: its recorded provenance type, else file signatures."""
    provenance = read_provenance(path)
    if provenance:
        return provenance["type"]
    if path.is_file():
        return next((t for pattern, t in _SIGNATURES if path.match(pattern)), None)
    if path.is_dir():
        for pattern, type_name in _SIGNATURES:
            if next(path.rglob(pattern), None) is not None:
                return type_name
    return None


def has_split(path: Path, split: str) -> bool:
    return (path / SPLITS_DIR / split).is_dir()


def data_files(path: Path, suffixes: tuple[str, ...], split: str | None = None) -> list[Path]:
    """An artifact's data files: the file itself, a directory's matching files (recursive, sorted), or a glob's;
    with `split`, only that split's of an artifact that has splits (an unsplit one is read whole)."""
    if split is not None and has_split(path, split):
        path = path / SPLITS_DIR / split
    if path.is_file():
        candidates = [path]
    elif path.is_dir():
        candidates = sorted(p for p in path.rglob("*") if p.is_file())
    else:
        candidates = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not candidates:
            raise contract_error("artifact_missing", f"{path}: no such file, directory or glob match")
    matching = [p for p in candidates if p.suffix in suffixes and p.name != PROVENANCE_FILE]
    if not matching:
        found = sniff_type(path) if path.exists() else None
        if found:
            raise contract_error(
                "artifact_type_mismatch", f"{path}: holds {found}, not files with suffix {'/'.join(suffixes)}"
            )
        raise contract_error("empty_artifact", f"{path}: no {'/'.join(suffixes)} files")
    return matching
