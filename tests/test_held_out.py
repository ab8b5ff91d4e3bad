"""Held out by construction: data_prep/split, training on its train split, evaluation on its test split, and
training_data_used_for_evaluation when an evaluation would score rows its model learned from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import DATA
from helpers import materialize, one_stage_pipeline

from nemotron_assets.artifacts.files import HELD_OUT, TRAIN, data_files
from nemotron_assets.catalog import CATALOG
from nemotron_assets.digests import content_digest
from nemotron_assets.errors import NamedError
from nemotron_assets.held_out import TRAINED_ON, reject_trained_on, trained_on
from nemotron_assets.steps import InputArtifact
from resources.artifact_store import ArtifactStore, write_provenance

CHAT = DATA / "tiny_chat.jsonl"


def split_rows(result, split: str) -> list[dict]:
    return [json.loads(line) for line in (result.path / "splits" / split / "part-00000.jsonl").read_text().splitlines()]


def test_split_is_a_stable_hash_partition(store: ArtifactStore, tmp_path: Path):
    result = materialize(one_stage_pipeline("data_prep/split", CHAT), store)
    train, test = split_rows(result, TRAIN), split_rows(result, HELD_OUT)
    rows = [json.loads(line) for line in CHAT.read_text().splitlines()]
    assert len(train) + len(test) == len(rows) == 48 and 6 <= len(test) <= 18  # tiny: test_ratio 0.25
    assert result.stats == {"train_records": len(train), "held_out_records": len(test)}
    assert not {json.dumps(r) for r in train} & {json.dumps(r) for r in test}

    grown = tmp_path / "grown.jsonl"  # records added (and one duplicated): no earlier record changes split
    grown.write_text(CHAT.read_text() + CHAT.read_text().splitlines()[0] + "\n" + CHAT.read_text())
    again = materialize(one_stage_pipeline("data_prep/split", grown), store)
    assert {json.dumps(r) for r in split_rows(again, HELD_OUT)} == {json.dumps(r) for r in test}

    other_seed = materialize(one_stage_pipeline("data_prep/split", CHAT, seed=7), store)
    assert split_rows(other_seed, HELD_OUT) != test

    assert data_files(result.path, (".jsonl",), TRAIN) == [result.path / "splits" / "train" / "part-00000.jsonl"]
    assert data_files(CHAT, (".jsonl",), HELD_OUT) == [CHAT]  # an unsplit artifact is read whole


@pytest.mark.parametrize(
    ("ratio", "error"),
    [(1e-9, "empty_held_out_split"), (0.999999999, "empty_train_split"), (0.0, "invalid_split_ratio")],
)
def test_split_errors(store: ArtifactStore, ratio: float, error: str):
    with pytest.raises(NamedError, match=error) as raised:
        materialize(one_stage_pipeline("data_prep/split", CHAT, test_ratio=ratio), store)
    assert raised.value.recovery


def published(directory: Path, provenance: dict) -> Path:
    directory.mkdir(parents=True)
    write_provenance(directory, {"type": "checkpoint_hf"} | provenance)
    return directory


def test_evaluating_on_what_the_lineage_trained_on_is_refused(store: ArtifactStore, tmp_path: Path):
    """merged <- lora, which trained on chat_split's train split: scoring merged on that split's held-out rows is
    allowed; on the chat file it was split from, on its train file, on another split of the same file, or on data
    derived from what it trained on, it is refused."""
    split = materialize(one_stage_pipeline("data_prep/split", CHAT), store)
    split_input = InputArtifact("chat_split", "training_jsonl", split.path, split.version)
    record = trained_on({"training_jsonl": split_input})
    assert record[0]["split"] == TRAIN and record[0]["ancestors"] == [content_digest(CHAT)]
    lora = published(tmp_path / "lora", {"asset_key": "t/lora", TRAINED_ON: record})
    merged = published(tmp_path / "merged", {"asset_key": "t/merged", "inputs": [{"path": str(lora), "version": "l"}]})
    other_split = materialize(one_stage_pipeline("data_prep/split", CHAT, seed=7), store)
    derived = materialize(one_stage_pipeline("data_prep/split", split.path), store)  # split again: derived data
    train_file = split.path / "splits" / "train" / "part-00000.jsonl"

    def evaluate(data: Path, version: str) -> None:
        inputs = {
            "checkpoint_hf": InputArtifact("model", "checkpoint_hf", merged, "m"),
            "training_jsonl": InputArtifact("chat", "training_jsonl", data, version),
        }
        reject_trained_on(CATALOG.step("eval/model_eval"), inputs)

    evaluate(split.path, split.version)  # reads splits/test
    evaluate(DATA / "tiny_dpo.jsonl", content_digest(DATA / "tiny_dpo.jsonl"))  # unrelated data
    refused = {
        "its train file": (train_file, content_digest(train_file)),
        "the file it was split from": (CHAT, content_digest(CHAT)),
        "another split of that file": (other_split.path, other_split.version),
        "data derived from its training data": (derived.path, derived.version),
    }
    for what, (data, version) in refused.items():
        with pytest.raises(NamedError, match="training_data_used_for_evaluation") as raised:
            evaluate(data, version)
        assert "t/lora learned from it" in str(raised.value) and "data_prep/split" in raised.value.recovery, what
