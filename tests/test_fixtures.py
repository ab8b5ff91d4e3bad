"""Fixtures are deterministic and offline, and the tiny model is a valid HF checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from nemotron_assets.artifacts import validate
from nemotron_assets.digests import content_digest
from nemotron_assets.fixtures import tiny_llama, tiny_tokenizer


def test_fixtures_rebuild_byte_identical(fixtures_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("NEMOTRON_FIXTURES", str(tmp_path))
    assert content_digest(tiny_tokenizer()) == content_digest(fixtures_dir / "tiny-bpe")
    assert content_digest(tiny_llama()) == content_digest(fixtures_dir / "tiny-llama")


def test_tiny_llama_is_a_complete_hf_checkpoint(fixtures_dir: Path):
    stats = validate(fixtures_dir / "tiny-llama", "checkpoint_hf")
    assert stats["architectures"] == ["LlamaForCausalLM"] and stats["has_chat_template"]
