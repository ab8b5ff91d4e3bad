"""Model cards: every checkpoint_hf / checkpoint_lora is published with a Hugging Face README.md written from its
provenance; the gate's verdict lands in a card beside the sealed artifact; an export bundles it, re-sealed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import materialize_in_dagster
from huggingface_hub import ModelCard
from test_gates import gated

from nemotron_assets import cli
from nemotron_assets.artifacts import validate
from nemotron_assets.errors import NamedError
from nemotron_assets.gates import Comparison
from nemotron_assets.model_card import CARD, export, sidecar, write_verdict
from resources.artifact_store import ArtifactStore, verify


@pytest.fixture(scope="module")
def store(fixtures_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ArtifactStore:
    """eval_base -> lora -> eval_lora (gate passes) -> merged, materialized once."""
    root = tmp_path_factory.mktemp("store")
    assert materialize_in_dagster(gated(0.05), root).success
    return ArtifactStore(root=str(root))


def card(path: Path) -> ModelCard:
    return ModelCard(path.read_text())


def test_published_card_is_a_hub_card_from_provenance(store: ArtifactStore, fixtures_dir: Path):
    _, lora = store.current(("g", "lora"))
    published = card(lora / CARD)
    data = published.data.to_dict()
    assert data["base_model"] == "tiny-llama"  # the local base by name: no machine path in a card
    assert data["library_name"] == "peft" and {"lora", "peft", "nemotron-assets"} <= set(data["tags"])
    split = store.current(("g", "chat_split"))[0]
    assert data["datasets"] == [f"g/chat_split@{split}"]
    assert "license" not in data and "Add `license: <id>`" in published.text
    assert "step_scheduler.max_steps" in published.text and "final_loss" in published.text
    assert "Not evaluated when published" in published.text
    assert str(fixtures_dir) not in published.text and str(store.base) not in published.text
    verify(lora, full=True)  # sealed with the artifact's other files
    assert validate(lora, "checkpoint_lora")["rank"] > 0


def test_merged_card_names_what_its_adapter_learned(store: ArtifactStore):
    _, merged = store.current(("g", "merged"))
    data = card(merged / CARD).data.to_dict()
    assert data["library_name"] == "transformers" and data["base_model"] == "tiny-llama"
    assert data["datasets"] == [f"g/chat_split@{store.current(('g', 'chat_split'))[0]}"]
    assert validate(merged, "checkpoint_hf")["parameters"] > 0


def test_gate_verdict_card_beside_the_sealed_artifact(store: ArtifactStore):
    version, lora = store.current(("g", "lora"))
    full = card(sidecar(lora.parent, version))
    assert "Quality gate: **passed** (tolerance 0.05)" in full.text
    assert "| nemotron_chat_loss/nll_per_byte |" in full.text and "`eval_base` (before)" in full.text
    assert full.data.to_dict()["base_model"] == "tiny-llama"
    verify(lora, full=True)  # the verdict did not touch the sealed version


def test_export_bundles_the_verdict_card(store: ArtifactStore, tmp_path: Path):
    version, lora = store.current(("g", "lora"))
    destination = export(store, ("g", "lora"), tmp_path / "hub")
    assert (destination / CARD).read_text() == sidecar(lora.parent, version).read_text()
    verify(destination, full=True)
    assert validate(destination, "checkpoint_lora")["base_fingerprint"]
    with pytest.raises(NamedError, match="export_destination_exists"):
        export(store, ("g", "lora"), destination)
    with pytest.raises(NamedError, match="artifact_missing"):
        export(store, ("g", "nothing"), tmp_path / "other")


def test_export_cli(store: ArtifactStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    args = ["store", "export", "g/merged", str(tmp_path / "merged"), "--root", str(store.base)]
    assert cli.main(args) == 0
    assert card(tmp_path / "merged" / CARD).data.to_dict()["library_name"] == "transformers"
    assert cli.main(args) == 1
    assert "export_destination_exists" in capsys.readouterr().out


def test_a_failed_verdict_on_a_checkpoint_hf(store: ArtifactStore, tmp_path: Path):
    """The gate's verdict card of a full checkpoint (what SFT, merges and exports publish): its scores, FAILED, and
    the transformers card header, beside a copy of the merged version."""
    version, merged = store.current(("g", "merged"))
    copy = Path(shutil.copytree(merged, tmp_path / "merged" / version))
    rows = [Comparison("mcq/acc", 0.5, 0.25, -0.25, False), Comparison("chat/nll_per_byte", 1.2, 1.1, 0.1, True)]
    verdict = {"before": "eval_base", "after": "eval_merged", "tolerance": 0.05, "passed": False, "reason": "mcq/acc"}
    written = card(write_verdict(copy, verdict, rows))
    assert written.data.to_dict()["library_name"] == "transformers"
    assert "Quality gate: **FAILED** (tolerance 0.05): mcq/acc." in written.text
    assert "| mcq/acc | 0.5 | 0.25 |" in written.text and "`eval_merged` (after)" in written.text
    verify(copy, full=True)  # the verdict lies beside the version, never in it
