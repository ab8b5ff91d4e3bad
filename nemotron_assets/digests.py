"""Content digests: of files, of directory trees, and of the canonical JSON of a dict.

Files are hashed with BLAKE3 (1.7x sha256 on one core here, and it uses every core on a large file), and each
file's digest is kept in a stat-keyed cache, as git's index and DVC's state do: (device, inode) with (size,
mtime, ctime) -> digest, keyed by inode as DVC's is, so an artifact renamed into place keeps its digests. An
unchanged multi-GB source or model is then never re-read; any write to a file changes its ctime, so a stale entry
cannot match. A file modified within the filesystem's timestamp granularity of its hashing ("racy", in git's
words) is not cached.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import blake3

from nemotron_assets.paths import setting

RACY_NS = 100_000_000  # coarser than any filesystem's timestamp granularity: 0.1 s
MMAP_BYTES = 1 << 24  # files from 16 MiB are memory-mapped and hashed on every core


def read_digest(path: Path) -> str:
    """BLAKE3 of a file's bytes, read now."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    if path.stat().st_size >= MMAP_BYTES:
        hasher.update_mmap(path)
    else:
        hasher.update(path.read_bytes())
    return hasher.hexdigest()


class DigestCache:
    """The stat-keyed digest cache of one machine, in SQLite; unusable (read-only, locked) = no cache."""

    def __init__(self, location: Path):
        self.location = location
        self._connection: tuple[int, sqlite3.Connection | None] | None = None

    def _db(self) -> sqlite3.Connection | None:
        if self._connection is None or self._connection[0] != os.getpid():  # one connection per process
            try:
                self.location.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.location, timeout=30, isolation_level=None)
                db.execute("CREATE TABLE IF NOT EXISTS digests (file TEXT PRIMARY KEY, stat TEXT, digest TEXT)")
            except (OSError, sqlite3.Error):
                db = None
            self._connection = (os.getpid(), db)
        return self._connection[1]

    def digest(self, path: Path) -> str:
        """The file's digest: from the cache when its stat is unchanged, else read (and cached unless racy)."""
        before = os.stat(path)
        file, key = f"{before.st_dev}:{before.st_ino}", stat_key(before)
        db = self._db()
        if db is not None:
            try:
                row = db.execute("SELECT digest FROM digests WHERE file = ? AND stat = ?", (file, key)).fetchone()
            except sqlite3.Error:
                row = None
            if row:
                return row[0]
        started = time.time_ns()
        value = read_digest(path)
        settled = max(before.st_mtime_ns, before.st_ctime_ns) < started - RACY_NS
        if db is not None and settled and stat_key(os.stat(path)) == key:
            with contextlib.suppress(sqlite3.Error):
                db.execute("INSERT OR REPLACE INTO digests VALUES (?, ?, ?)", (file, key, value))
        return value


def stat_key(st: os.stat_result) -> str:
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


_CACHES: dict[str, DigestCache] = {}


def digest_cache() -> DigestCache:
    """The cache at $NEMOTRON_DIGEST_CACHE (default .nemotron/digests.sqlite: this machine's, like DVC's state)."""
    location = setting("NEMOTRON_DIGEST_CACHE")
    return _CACHES.setdefault(location, DigestCache(Path(location)))


def file_digest(path: Path, cached: bool = True) -> str:
    """A file's BLAKE3 digest; `cached=False` reads it whatever the cache holds (full verification)."""
    return digest_cache().digest(path) if cached else read_digest(path)


def tree_digests(root: Path, exclude: frozenset[str] = frozenset(), cached: bool = True) -> dict[str, str]:
    """{relative path: digest | 'link:<target>'} for every file and symlink under `root`."""
    digests = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        if relative in exclude:
            continue
        if path.is_symlink():
            digests[relative] = f"link:{os.readlink(path)}"
        elif path.is_file():
            digests[relative] = file_digest(path, cached)
    return digests


def json_digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def content_digest(path: Path) -> str:
    """Digest of what a path holds: a file's bytes, a directory tree, or the files a glob matches."""
    if path.is_dir():
        return json_digest(tree_digests(path))
    if path.is_file():
        return file_digest(path)
    matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
    return json_digest({str(p): file_digest(p) for p in matches if p.is_file()})
