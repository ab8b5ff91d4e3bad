"""Artifact contracts on good and corrupted artifacts: each corruption gives its named error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import DATA
from helpers import materialize, one_stage_pipeline, published

from nemotron_assets.artifacts import validate
from nemotron_assets.artifacts.packed_parquet import arrow_schema
from nemotron_assets.errors import NamedError
from resources.artifact_store import ArtifactStore, verify


def _published_copy(step: str, source: Path, tmp_path: Path) -> Path:
    """A freshly published artifact (from its own store), copied so a test can corrupt it."""
    result = materialize(one_stage_pipeline(step, source), ArtifactStore(root=str(tmp_path / "fixture_store")))
    return Path(shutil.copytree(result.path, tmp_path / step.replace("/", "_"), symlinks=True))


@pytest.fixture
def packed(fixtures_dir: Path, tmp_path: Path) -> Path:
    return _published_copy("data_prep/sft_packing", DATA / "tiny_chat.jsonl", tmp_path)


@pytest.fixture
def binidx(fixtures_dir: Path, tmp_path: Path) -> Path:
    return _published_copy("data_prep/pretrain_prep", DATA / "tiny_corpus.jsonl", tmp_path)


def named(error: str, path: Path, type_name: str) -> NamedError:
    with pytest.raises(NamedError) as caught:
        validate(path, type_name)
    assert caught.value.name == error, caught.value
    assert caught.value.recovery
    return caught.value


def jsonl(tmp_path: Path, *records: object, raw: str | None = None) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text(raw if raw is not None else "".join(json.dumps(r) + "\n" for r in records))
    return path


def test_good_artifacts_pass(packed: Path, binidx: Path):
    stats = validate(packed, "packed_parquet")
    assert stats["bins"] > 0 and stats["trainable_tokens"] > 0 and stats["pack_size"] == 256
    assert validate(binidx, "binidx")["documents"] == 192
    for name, shape in [("tiny_chat", "chat"), ("tiny_dpo", "dpo"), ("tiny_rlvr", "rlvr")]:
        assert validate(DATA / f"{name}.jsonl", "training_jsonl")["shape"] == shape
    assert validate(DATA / "tiny_corpus.jsonl", "filtered_jsonl")["shape"] == "text"


def test_truncated_idx(binidx: Path):
    idx = next((binidx / "shards").glob("*.idx"))
    idx.write_bytes(idx.read_bytes()[:-10])
    assert "bytes, expected" in named("corrupt_binidx", binidx, "binidx").detail


def test_truncated_bin(binidx: Path):
    data = next((binidx / "shards").glob("*.bin"))
    data.write_bytes(data.read_bytes()[:-4])
    named("corrupt_binidx", binidx, "binidx")


def test_blend_naming_a_missing_shard(binidx: Path):
    blend = json.loads((binidx / "blend.json").read_text())
    blend["train"][1] = "shards/shard_999999"
    (binidx / "blend.json").write_text(json.dumps(blend))
    named("corrupt_binidx", binidx, "binidx")
    (binidx / "blend.json").write_text(json.dumps({"train": ["1.0"]}))
    named("missing_or_invalid_blend", binidx, "binidx")


def _rewrite_first_shard(packed: Path, column: str, transform) -> None:
    shard = next((packed / "shards").glob("*.parquet"))
    table = pq.read_table(shard).to_pylist()
    for row in table:
        row[column] = transform(row)
    pq.write_table(pa.Table.from_pylist(table, schema=arrow_schema()), shard)


def test_loss_mask_length_mismatch(packed: Path):
    _rewrite_first_shard(packed, "loss_mask", lambda row: row["loss_mask"][:-1])
    assert "loss_mask length" in named("bad_loss_masks", packed, "packed_parquet").detail


def test_loss_mask_not_binary(packed: Path):
    _rewrite_first_shard(packed, "loss_mask", lambda row: [2] * len(row["loss_mask"]))
    named("bad_loss_masks", packed, "packed_parquet")


def test_seq_start_id_not_increasing(packed: Path):
    _rewrite_first_shard(packed, "seq_start_id", lambda row: list(reversed(row["seq_start_id"])))
    named("bad_loss_masks", packed, "packed_parquet")


def test_all_masks_zero(packed: Path):
    for shard in (packed / "shards").glob("*.parquet"):
        rows = pq.read_table(shard).to_pylist()
        for row in rows:
            row["loss_mask"] = [0] * len(row["loss_mask"])
        pq.write_table(pa.Table.from_pylist(rows, schema=arrow_schema()), shard)
    assert "no token has loss_mask 1" in named("bad_loss_masks", packed, "packed_parquet").detail


def test_packed_parquet_handed_to_a_jsonl_consumer(packed: Path):
    error = named("artifact_type_mismatch", packed, "training_jsonl")
    assert "packed_parquet" in error.detail and "training_jsonl" in error.detail


def test_jsonl_handed_to_a_packed_consumer_names_the_fix():
    error = named("artifact_type_mismatch", DATA / "tiny_chat.jsonl", "packed_parquet")
    assert "data_prep/sft_packing" in error.detail


@pytest.mark.parametrize(
    ("records", "raw", "type_name", "error"),
    [
        ([{"text": "no messages here"}], None, "training_jsonl", "missing_messages"),
        ([{"messages": []}], None, "training_jsonl", "missing_messages"),
        ([{"messages": [{"role": "gpt", "content": "hi"}]}], None, "training_jsonl", "invalid_role"),
        ([{"messages": [{"role": "user", "content": 3}]}], None, "training_jsonl", "invalid_role"),
        ([], "", "training_jsonl", "empty_artifact"),
        ([], '{"messages": [}\n', "training_jsonl", "malformed_jsonl"),
        ([], "[1, 2]\n", "training_jsonl", "malformed_jsonl"),
        ([{"prompt": "p", "chosen": "a", "rejected": "a"}], None, "training_jsonl", "invalid_dpo_preference_schema"),
        (
            [{"prompt": "p", "chosen": "a", "rejected": "b", "chosen_score": 1, "rejected_score": 5}],
            None, "training_jsonl", "invalid_dpo_preference_schema",
        ),
        ([{"prompt": "p", "answer": ""}], None, "training_jsonl", "missing_rlvr_verifier_fields"),
        ([{"answer": "4"}], None, "training_jsonl", "missing_rlvr_verifier_fields"),
        (
            [
                {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
                {"prompt": "p", "chosen": "a", "rejected": "b"},
            ],
            None, "training_jsonl", "mixed_record_shapes",
        ),
        ([], "[" * 100_000 + "]" * 100_000 + "\n", "training_jsonl", "malformed_jsonl"),
        (
            [{"prompt": "p", "chosen": "a", "rejected": "b", "chosen_score": "high", "rejected_score": 1}],
            None, "training_jsonl", "invalid_dpo_preference_schema",
        ),
        ([{"text": "  "}], None, "filtered_jsonl", "missing_text_field"),
    ],
)  # fmt: skip
def test_bad_jsonl(tmp_path: Path, records, raw, type_name: str, error: str):
    named(error, jsonl(tmp_path, *records, raw=raw), type_name)


def test_invalid_utf8_is_malformed_jsonl(tmp_path: Path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n')  # Latin-1, not UTF-8
    assert "not UTF-8 at byte" in named("malformed_jsonl", path, "training_jsonl").detail


def test_an_unreadable_provenance_is_corrupt_file(packed: Path):
    (packed / "provenance.json").write_bytes(b'{"type": "packed_par')
    named("corrupt_file", packed, "packed_parquet")


def test_missing_path(tmp_path: Path):
    named("artifact_missing", tmp_path / "nope.jsonl", "training_jsonl")


def test_checkpoint_hf(fixtures_dir: Path, tmp_path: Path):
    model = Path(shutil.copytree(fixtures_dir / "tiny-llama", tmp_path / "model"))
    assert validate(model, "checkpoint_hf")["parameters"] > 100_000
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    assert "shorter than its tensors" in named("missing_hf_config_or_tokenizer", model, "checkpoint_hf").detail
    (model / "tokenizer.json").unlink()
    named("missing_hf_config_or_tokenizer", model, "checkpoint_hf")


def test_checkpoint_lora_needs_its_base_recorded(fixtures_dir: Path, tmp_path: Path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}))
    shutil.copy(fixtures_dir / "tiny-llama" / "model.safetensors", adapter / "adapter_model.safetensors")
    named("base_not_recorded_for_merge", adapter, "checkpoint_lora")
    (adapter / "adapter_config.json").write_text(json.dumps({"r": "8", "target_modules": 7}))
    named("invalid_adapter_config", adapter, "checkpoint_lora")
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}))
    base = {"name_or_path": "tiny-llama", "fingerprint": "abc123"}
    (adapter / "provenance.json").write_text(json.dumps({"type": "checkpoint_lora", "base_model": base}))
    stats = validate(adapter, "checkpoint_lora")
    assert (stats["rank"], stats["alpha"], stats["base_model"]) == (8, 16, "tiny-llama")


def test_digests_detect_edits_after_publication(packed: Path):
    verify(packed)
    (packed / "splits" / "train" / "extra.parquet").symlink_to("../../shards/shard_000000.parquet")
    assert "changed since publication" in str(pytest.raises(NamedError, verify, packed).value)


@pytest.mark.parametrize(
    ("records", "raw", "error"),
    [
        ([{"text": "plain text is not chat"}], None, "missing_messages"),
        ([{"messages": [{"role": "human", "content": "hi"}]}], None, "invalid_role"),
        ([], "", "empty_artifact"),
        ([], '{"messages": \n', "malformed_jsonl"),
    ],
)
def test_bad_input_publishes_nothing(fixtures_dir: Path, store: ArtifactStore, tmp_path: Path, records, raw, error):
    pipeline = one_stage_pipeline("data_prep/sft_packing", jsonl(tmp_path, *records, raw=raw), num_shards=1)
    with pytest.raises(NamedError) as caught:
        materialize(pipeline, store)
    assert caught.value.name == error
    assert published(store) == []


def test_packed_parquet_fed_to_jsonl_step_publishes_nothing(packed: Path, store: ArtifactStore):
    pipeline = one_stage_pipeline("data_prep/sft_packing", packed)
    with pytest.raises(NamedError, match="artifact_type_mismatch"):
        materialize(pipeline, store)
    assert published(store) == []
