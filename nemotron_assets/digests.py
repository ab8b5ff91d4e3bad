"""Content digests: of files, of directory trees, and of the canonical JSON of a dict."""

from __future__ import annotations

import glob
import hashlib
import json
import os
from pathlib import Path
from typing import Any


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def tree_digests(root: Path, exclude: frozenset[str] = frozenset()) -> dict[str, str]:
    """{relative path: sha256 | 'link:<target>'} for every file and symlink under `root`."""
    digests = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        if relative in exclude:
            continue
        if path.is_symlink():
            digests[relative] = f"link:{os.readlink(path)}"
        elif path.is_file():
            digests[relative] = file_sha256(path)
    return digests


def json_digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def content_digest(path: Path) -> str:
    """Digest of what a path holds: a file's bytes, a directory tree, or the files a glob matches."""
    if path.is_dir():
        return json_digest(tree_digests(path))
    if path.is_file():
        return file_sha256(path)
    matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
    return json_digest({str(p): file_sha256(p) for p in matches if p.is_file()})
