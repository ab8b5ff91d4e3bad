"""The artifact store: version-addressed artifact directories, published atomically, sealed with digests.

Layout: <root>/<pipeline>/<artifact>/<version>/ holds one complete artifact and its provenance.json;
<root>/<pipeline>/<artifact>/CURRENT names the version consumers read; PROMOTED, for a gated checkpoint, the last
version its quality gate passed. An artifact is built in a
temporary sibling directory and renamed into place only once it is complete, valid and on disk (every file and
directory fsynced), so a killed run, or a crash of the machine, never leaves a half-written artifact where a
consumer can see it. A build holds a lock (`flock` on `<staging>.lock`) while it runs: a staging directory whose
lock nobody holds belongs to a dead run and is removed when the artifact is next built, or by `store gc`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg
from pydantic import Field

from nemotron_assets.artifacts.files import PROVENANCE_FILE, read_provenance
from nemotron_assets.digests import tree_digests
from nemotron_assets.errors import contract_error
from nemotron_assets.paths import setting

T = TypeVar("T")
CURRENT = "CURRENT"
PROMOTED = "PROMOTED"
STAGING = ".tmp-"
WORK = ".work"  # <artifact>/.work/<version>: a step's resumable work directory, kept across attempts
SETTLE_SECONDS = 60  # a pointer temporary younger than this may still be being written


class ArtifactStore(dg.ConfigurableResource):
    """Where artifacts live; every materialization publishes one immutable, versioned directory."""

    root: str | None = Field(
        None, description="Artifact root directory; unset = $NEMOTRON_ARTIFACT_ROOT, else <repo>/.nemotron/artifacts."
    )

    @property
    def base(self) -> Path:
        return Path(self.root or setting("NEMOTRON_ARTIFACT_ROOT"))

    def artifact_dir(self, key: Sequence[str]) -> Path:
        return self.base.joinpath(*key)

    def version_dir(self, key: Sequence[str], version: str) -> Path:
        return self.artifact_dir(key) / version

    def current(self, key: Sequence[str], pointer: str = CURRENT) -> tuple[str, Path] | None:
        """(version, path) of the artifact consumers should read (or another pointer's), None when unset."""
        path = self.artifact_dir(key) / pointer
        if not path.exists():
            return None
        version = path.read_text().strip()
        return version, self.version_dir(key, version)

    def set_current(self, key: Sequence[str], version: str, pointer: str = CURRENT) -> None:
        directory = self.artifact_dir(key)
        with tempfile.NamedTemporaryFile("w", dir=directory, prefix=f".{pointer}{STAGING}", delete=False) as f:
            f.write(version)
            f.flush()
            os.fsync(f.fileno())
        os.replace(f.name, directory / pointer)
        fsync_directory(directory)

    def withdraw(self, key: Sequence[str]) -> None:
        """No version is current any more (consumers find the artifact missing); nothing is deleted."""
        (self.artifact_dir(key) / CURRENT).unlink(missing_ok=True)

    def publish(self, key: Sequence[str], version: str, build: Callable[[Path], T]) -> tuple[Path, T]:
        """Run `build(staging_dir)`, then rename the directory into place and make it current.

        `build` must leave a complete, validated, sealed artifact; on any exception the staging
        directory is removed and nothing is published.
        """
        final = self.version_dir(key, version)
        final.parent.mkdir(parents=True, exist_ok=True)
        collect(final.parent)
        staging = final.parent / f".{version}{STAGING}{uuid.uuid4().hex[:8]}"
        with building(staging):
            try:
                result = build(staging)
                fsync_tree(staging)
                if final.exists():  # a concurrent run published the same version first
                    shutil.rmtree(staging)
                else:
                    staging.rename(final)
                    fsync_directory(final.parent)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        self.set_current(key, version)
        return final, result

    def gc(self) -> list[Path]:
        """Remove what dead runs left anywhere in the store: staging directories, pointer temporaries, and the
        work directories of versions published since. Published versions are never entered. Returns the removed."""
        removed = []
        for directory, children, _ in os.walk(self.base):
            here = Path(directory)
            removed += collect(here)
            work = here / WORK
            if work.is_dir():
                for done in (w for w in sorted(work.iterdir()) if (here / w.name).is_dir()):
                    shutil.rmtree(done, ignore_errors=True)
                    removed.append(done)
            artifact = (here / CURRENT).exists()  # its directories are versions
            children[:] = [
                c for c in children if not (artifact or c.startswith(".") or (here / c / PROVENANCE_FILE).exists())
            ]
        return removed


@contextlib.contextmanager
def building(staging: Path) -> Iterator[None]:
    """Hold `<staging>.lock` while the build runs (the kernel drops the lock when the process dies, kill -9 too).
    The lock is taken before the directory exists, and re-taken if a collector removed the file meanwhile."""
    lock = staging.with_name(staging.name + ".lock")
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if lock.exists() and os.stat(lock).st_ino == os.fstat(fd).st_ino:
            break
        os.close(fd)
    try:
        staging.mkdir()
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


def collect(directory: Path) -> list[Path]:
    """Remove what dead runs left in one directory of the store: staging directories whose lock nobody holds (their
    lock files with them), and pointer temporaries older than SETTLE_SECONDS. Returns what was removed."""
    removed = []
    for path in sorted(directory.glob(f".*{STAGING}*")):
        lock = path if path.suffix == ".lock" else path.with_name(path.name + ".lock")
        if not os.path.lexists(path) or held(lock):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            lock.unlink(missing_ok=True)
        elif path == lock:
            if path.with_suffix("").exists():
                continue  # goes with its directory
            path.unlink(missing_ok=True)
        elif path.lstat().st_mtime < time.time() - SETTLE_SECONDS:  # a pointer being written has no lock
            path.unlink(missing_ok=True)
        else:
            continue
        removed.append(path)
    return removed


def held(lock: Path) -> bool:
    """A live build holds this lock (the kernel releases it when its process dies)."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def fsync_tree(root: Path) -> None:
    """Every file and directory under `root` (and `root`) on disk."""
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_directory(Path(directory))


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_provenance(directory: Path, provenance: dict[str, Any]) -> None:
    (directory / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=1, sort_keys=True, default=str))


def seal(directory: Path, provenance: dict[str, Any]) -> dict[str, Any]:
    """Write provenance.json with the digest of every other file in the artifact; return what was written."""
    sealed = provenance | {"files": tree_digests(directory, frozenset({PROVENANCE_FILE}))}
    write_provenance(directory, sealed)
    return sealed


def verify(directory: Path, full: bool = False) -> None:
    """artifact_digest_mismatch unless every file matches the digests recorded at publication (an unchanged file's
    digest from the stat-keyed cache; `full` re-reads every byte)."""
    recorded = (read_provenance(directory) or {}).get("files")
    if recorded is None:
        raise contract_error("artifact_digest_mismatch", f"{directory}: no recorded file digests")
    actual = tree_digests(directory, frozenset({PROVENANCE_FILE}), cached=not full)
    changed = sorted(k for k in recorded.keys() | actual.keys() if recorded.get(k) != actual.get(k))
    if changed:
        raise contract_error("artifact_digest_mismatch", f"{directory}: changed since publication: {changed[:5]}")
