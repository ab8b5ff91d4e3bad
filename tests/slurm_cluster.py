"""The local single-node Slurm (nemotron_assets.local_slurm) as a session fixture. Skips only when the Slurm
binaries are not installed (.ci/run installs them)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nemotron_assets.local_slurm import PARTITION, missing_programs, running

__all__ = ["PARTITION", "slurm_cluster"]


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The cluster for the session; yields its directory (logs, state). SLURM_CONF points at it."""
    if missing := missing_programs():
        pytest.skip(f"Slurm not installed here (missing {', '.join(missing)}); .ci/run installs it from Debian")
    with running(tmp_path_factory.mktemp("slurm")) as directory:
        yield directory
