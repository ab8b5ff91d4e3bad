"""Shared fixtures: offline settings, the tiny tokenizer/model built once per session, a fresh artifact root."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from nemotron_assets.fixtures.services import ServiceServer, serve
from resources.artifact_store import ArtifactStore

os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", DAGSTER_DISABLE_TELEMETRY="1")

DATA = Path(__file__).resolve().parents[1] / "nemotron_assets" / "fixtures" / "data"


@pytest.fixture(scope="session", autouse=True)
def isolated_state(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never touch the user's Dagster instance or artifact root."""
    home = tmp_path_factory.mktemp("dagster_home")
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = str(home)
    os.environ["NEMOTRON_ARTIFACT_ROOT"] = str(tmp_path_factory.mktemp("artifacts"))
    os.environ["NEMOTRON_DIGEST_CACHE"] = str(tmp_path_factory.mktemp("state") / "digests.sqlite")


@pytest.fixture(scope="session")
def fixtures_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny tokenizer and tiny Llama, built once into a session directory."""
    from nemotron_assets.fixtures import tiny_llama, tiny_tokenizer

    directory = tmp_path_factory.mktemp("fixtures")
    os.environ["NEMOTRON_FIXTURES"] = str(directory)
    tiny_tokenizer()
    tiny_llama()
    return directory


@pytest.fixture
def artifact_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "artifacts"
    monkeypatch.setenv("NEMOTRON_ARTIFACT_ROOT", str(root))
    return root


@pytest.fixture
def store(artifact_root: Path) -> ArtifactStore:
    return ArtifactStore(root=str(artifact_root))


@pytest.fixture(scope="module")
def server() -> Iterator[ServiceServer]:
    """The deterministic loopback services (OpenAI-compatible + NMT) of `nemotron-assets services`."""
    with serve() as running:
        yield running


@pytest.fixture
def tokenizer_dir(fixtures_dir: Path) -> Path:
    return fixtures_dir / "tiny-bpe"
