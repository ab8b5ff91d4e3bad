"""The artifact store: version-addressed artifact directories, published atomically, sealed with digests.

Layout: <root>/<pipeline>/<artifact>/<version>/ holds one complete artifact and its provenance.json;
<root>/<pipeline>/<artifact>/CURRENT names the version consumers read; PROMOTED, for a gated checkpoint, the last
version its quality gate passed. An artifact is built in a
temporary sibling directory and renamed into place only once it is complete and valid, so a killed run
never leaves a half-written artifact where a consumer can see it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
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
        with tempfile.NamedTemporaryFile("w", dir=directory, prefix=f".{pointer}.", delete=False) as f:
            f.write(version)
        os.replace(f.name, directory / pointer)

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
        staging = Path(tempfile.mkdtemp(prefix=f".{version}.tmp-", dir=final.parent))
        try:
            result = build(staging)
            if final.exists():  # a concurrent run published the same version first
                shutil.rmtree(staging)
            else:
                staging.rename(final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self.set_current(key, version)
        return final, result


def write_provenance(directory: Path, provenance: dict[str, Any]) -> None:
    (directory / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=1, sort_keys=True, default=str))


def seal(directory: Path, provenance: dict[str, Any]) -> dict[str, Any]:
    """Write provenance.json with the digest of every other file in the artifact; return what was written."""
    sealed = provenance | {"files": tree_digests(directory, frozenset({PROVENANCE_FILE}))}
    write_provenance(directory, sealed)
    return sealed


def verify(directory: Path) -> None:
    """artifact_digest_mismatch unless every file matches the digests recorded at publication."""
    recorded = (read_provenance(directory) or {}).get("files")
    if recorded is None:
        raise contract_error("artifact_digest_mismatch", f"{directory}: no recorded file digests")
    actual = tree_digests(directory, frozenset({PROVENANCE_FILE}))
    changed = sorted(k for k in recorded.keys() | actual.keys() if recorded.get(k) != actual.get(k))
    if changed:
        raise contract_error("artifact_digest_mismatch", f"{directory}: changed since publication: {changed[:5]}")
