"""The three data-prep steps, checked against independent references (transformers, megatron-core)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import DATA
from helpers import materialize, one_stage_pipeline, published
from transformers import AutoTokenizer

from nemotron_assets.artifacts.files import PROVENANCE_FILE
from nemotron_assets.errors import NamedError
from resources.artifact_store import ArtifactStore


def chat_records(path: Path = DATA / "tiny_chat.jsonl") -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def packed_sequences(artifact: Path) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Every sub-sequence of every bin, as (input_ids, loss_mask)."""
    sequences = []
    for shard in sorted((artifact / "shards").glob("*.parquet")):
        for row in pq.read_table(shard).to_pylist():
            bounds = [*row["seq_start_id"], len(row["input_ids"])]
            for start, end in pairwise(bounds):
                sequences.append((tuple(row["input_ids"][start:end]), tuple(row["loss_mask"][start:end])))
    return sequences


def reference_sequences(tokenizer_dir: Path, records: list[dict], max_len: int):
    """What Megatron-Bridge needs: assistant mask from transformers, truncated, shifted to label positions."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    out, truncated = [], 0
    for record in records:
        rendered = tokenizer.apply_chat_template(
            record["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        truncated += len(rendered["input_ids"]) > max_len
        ids, mask = rendered["input_ids"][:max_len], rendered["assistant_masks"][:max_len]
        aligned = tuple(mask[1:]) + (0,)
        if any(aligned):  # a row with no trainable label (e.g. truncated before the reply) is dropped
            out.append((tuple(ids), aligned))
    return out, truncated


@pytest.mark.parametrize("pack_size", [256, 40])
def test_sft_packing_masks_align_with_megatron_bridge_labels(tokenizer_dir: Path, store: ArtifactStore, pack_size: int):
    pipeline = one_stage_pipeline("data_prep/sft_packing", DATA / "tiny_chat.jsonl", pack_size=pack_size)
    result = materialize(pipeline, store)
    got = packed_sequences(result.path)
    expected, truncated = reference_sequences(tokenizer_dir, chat_records(), pack_size)
    assert sorted(got) == sorted(expected)
    # Megatron-Bridge trains label ids[j+1] where loss_mask[j] == 1: the labels are exactly the assistant tokens
    stats = result.stats
    assert stats["rows"] == 48 and stats["sequences"] == len(expected) == 48 - stats["dropped_rows"]
    assert stats["trainable_tokens"] == sum(sum(mask) for _, mask in expected)
    assert stats["truncated"] == truncated and (truncated > 0) == (pack_size == 40)
    assert stats["packing_efficiency"] <= stats["packing_lower_bound_efficiency"] <= 100


def test_sft_packing_layout_and_splits(fixtures_dir: Path, store: ArtifactStore):
    result = materialize(one_stage_pipeline("data_prep/sft_packing", DATA / "tiny_chat.jsonl"), store)
    splits = {s: sorted(p.name for p in (result.path / "splits" / s).iterdir()) for s in ("train", "valid", "test")}
    assert [len(v) for v in splits.values()] == [2, 1, 1]  # tiny preset: 4 shards at 0.5 / 0.25 / 0.25
    assert all(name.split("__")[1] == "data" for names in splits.values() for name in names)
    linked = {(result.path / "splits" / s / n).resolve().name for s, names in splits.items() for n in names}
    assert linked == {f"shard_{k:06d}.parquet" for k in range(4)}
    schema = pq.read_schema(next((result.path / "shards").glob("*.parquet")))
    assert [str(schema.field(c).type) for c in ("input_ids", "loss_mask", "seq_start_id")] == [
        "list<element: int32>", "list<element: uint8>", "list<element: int32>"
    ]  # fmt: skip


def test_sft_packing_first_fit_decreasing_reaches_the_lower_bound(fixtures_dir: Path, store: ArtifactStore):
    pipeline = one_stage_pipeline(
        "data_prep/sft_packing", DATA / "tiny_chat.jsonl", num_shards=1, algorithm="first_fit_decreasing", pack_size=512
    )
    stats = materialize(pipeline, store).stats
    assert stats["bins"] == -(-stats["tokens"] // 512)


def test_rows_without_a_reply_are_dropped(fixtures_dir: Path, store: ArtifactStore, tmp_path: Path):
    data = tmp_path / "chat.jsonl"
    records = chat_records()[:3] + [{"messages": [{"role": "user", "content": "no answer"}]}]
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    stats = materialize(one_stage_pipeline("data_prep/sft_packing", data, num_shards=1), store).stats
    assert (stats["rows"], stats["sequences"], stats["dropped_rows"]) == (4, 3, 1)


def test_tokenizer_without_template(fixtures_dir: Path, store: ArtifactStore, tmp_path: Path):
    bare = Path(shutil.copytree(fixtures_dir / "tiny-bpe", tmp_path / "bare"))
    (bare / "chat_template.jsonl").unlink(missing_ok=True)
    (bare / "chat_template.jinja").unlink()
    pipeline = one_stage_pipeline("data_prep/sft_packing", DATA / "tiny_chat.jsonl", tokenizer=str(bare))
    with pytest.raises(NamedError, match="chat_template_missing"):
        materialize(pipeline, store)
    assert materialize(pipeline, store, chat_template="chatml").stats["sequences"] == 48


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"train_ratio": 0.5, "valid_ratio": 0.1, "test_ratio": 0.1}, "invalid_split_ratios"),
        ({"num_shards": 100}, "too_many_tiny_shards"),
        ({"tokenizer": "/nonexistent/tokenizer"}, "tokenizer_unavailable"),
        ({"chat_template": "not-a-template"}, "chat_template_missing"),
    ],
)
def test_sft_packing_errors(fixtures_dir: Path, store: ArtifactStore, config: dict, error: str):
    with pytest.raises(NamedError) as caught:
        materialize(one_stage_pipeline("data_prep/sft_packing", DATA / "tiny_chat.jsonl", **config), store)
    assert caught.value.name == error
    assert published(store) == []


def test_no_trainable_token_is_bad_loss_masks(fixtures_dir: Path, store: ArtifactStore, tmp_path: Path):
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hello"}]}) + "\n")
    with pytest.raises(NamedError, match="bad_loss_masks"):
        materialize(one_stage_pipeline("data_prep/sft_packing", data, num_shards=1), store)


def corpus_texts() -> list[str]:
    return [json.loads(line)["text"] for line in (DATA / "tiny_corpus.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(("dtype", "add_bos", "max_doc_tokens"), [("int32", False, None), ("uint16", True, 24)])
def test_pretrain_prep_reads_back_through_megatron_core(
    tokenizer_dir: Path, store: ArtifactStore, dtype: str, add_bos: bool, max_doc_tokens: int | None
):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    config = {"dtype": dtype, "add_bos": add_bos, "max_doc_tokens": max_doc_tokens}
    result = materialize(one_stage_pipeline("data_prep/pretrain_prep", DATA / "tiny_corpus.jsonl", **config), store)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    expected = []
    for text in corpus_texts():
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        specials = add_bos + 1
        if max_doc_tokens is not None:
            ids = ids[: max_doc_tokens - specials]
        expected.append([tokenizer.bos_token_id] * add_bos + ids + [tokenizer.eos_token_id])
    got = []
    for shard in range(4):
        dataset = IndexedDataset(str(result.path / "shards" / f"shard_{shard:06d}"))
        assert dataset.index.dtype == np.dtype(dtype)
        assert len(dataset.document_indices) == len(dataset) + 1
        got += [dataset[i].tolist() for i in range(len(dataset))]
    assert got == expected
    assert result.stats["tokens"] == sum(map(len, expected))


def test_pretrain_prep_blend(fixtures_dir: Path, store: ArtifactStore):
    result = materialize(one_stage_pipeline("data_prep/pretrain_prep", DATA / "tiny_corpus.jsonl"), store)
    blend = json.loads((result.path / "blend.json").read_text())
    assert {s: len(v) // 2 for s, v in blend.items()} == {"train": 2, "valid": 1, "test": 1}
    for flat in blend.values():
        assert sum(float(w) for w in flat[::2]) == pytest.approx(1, abs=1e-5)
        assert all((result.path / f"{prefix}.bin").exists() for prefix in flat[1::2])
    prefixes = [p for flat in blend.values() for p in flat[1::2]]
    assert len(set(prefixes)) == 4  # no shard in two splits


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"num_shards": 2}, "split_leakage_or_empty_validation"),
        ({"num_shards": 500}, "too_many_tiny_shards"),
        ({"add_eos": False, "max_doc_tokens": 0}, "empty_or_overlong_documents"),
        ({"text_field": "body"}, "missing_text_field"),
    ],
)
def test_pretrain_prep_errors(fixtures_dir: Path, store: ArtifactStore, config: dict, error: str):
    with pytest.raises(NamedError) as caught:
        materialize(one_stage_pipeline("data_prep/pretrain_prep", DATA / "tiny_corpus.jsonl", **config), store)
    assert caught.value.name == error
    assert published(store) == []


def test_vocab_too_large_for_uint16(fixtures_dir: Path, store: ArtifactStore, monkeypatch: pytest.MonkeyPatch):
    from nemotron_assets.steps.data_prep.tokenizer import Tokenizer

    monkeypatch.setattr(Tokenizer, "vocab_size", property(lambda self: 70_000))
    pipeline = one_stage_pipeline("data_prep/pretrain_prep", DATA / "tiny_corpus.jsonl", dtype="uint16")
    with pytest.raises(NamedError, match="vocab_exceeds_dtype"):
        materialize(pipeline, store)


def test_rl_prep_dpo(fixtures_dir: Path, store: ArtifactStore):
    result = materialize(one_stage_pipeline("data_prep/rl_prep", DATA / "tiny_dpo.jsonl", kind="dpo"), store)
    manifest = json.loads((result.path / "manifest.json").read_text())
    assert manifest["kind"] == "dpo" and manifest["test"] == ""
    rows = {s: [json.loads(x) for x in (result.path / manifest[s]).read_text().splitlines()] for s in ("train", "val")}
    assert len(rows["train"]) + len(rows["val"]) == 36 and rows["val"]
    original = [json.loads(x) for x in (DATA / "tiny_dpo.jsonl").read_text().splitlines()]
    assert sorted(map(json.dumps, rows["train"] + rows["val"])) == sorted(map(json.dumps, original))


def test_rl_prep_keeps_named_split_files(fixtures_dir: Path, store: ArtifactStore, tmp_path: Path):
    lines = (DATA / "tiny_rlvr.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "train.jsonl").write_text("".join(lines[:40]))
    (tmp_path / "validation.jsonl").write_text("".join(lines[40:]))
    stats = materialize(one_stage_pipeline("data_prep/rl_prep", tmp_path, num_shards_per_split=2), store).stats
    assert (stats["kind"], stats["train_rows"], stats["val_rows"], stats["test_rows"]) == ("rlvr", 40, 8, 0)
    (tmp_path / "extra.jsonl").write_text(lines[0])
    with pytest.raises(NamedError, match="split_names_do_not_match_rl_config"):
        materialize(one_stage_pipeline("data_prep/rl_prep", tmp_path), ArtifactStore(root=str(tmp_path / "s2")))


@pytest.mark.parametrize(
    ("source", "config", "error"),
    [
        ("tiny_rlvr.jsonl", {"kind": "dpo"}, "invalid_dpo_preference_schema"),
        ("tiny_dpo.jsonl", {"kind": "rlvr"}, "missing_rlvr_verifier_fields"),
        ("tiny_chat.jsonl", {}, "missing_rlvr_verifier_fields"),
        ("tiny_dpo.jsonl", {"val_ratio": 0.001}, "empty_split"),
    ],
)
def test_rl_prep_errors(fixtures_dir: Path, store: ArtifactStore, source: str, config: dict, error: str):
    with pytest.raises(NamedError) as caught:
        materialize(one_stage_pipeline("data_prep/rl_prep", DATA / source, **config), store)
    assert caught.value.name == error
    assert published(store) == []


def test_pretrain_prep_needs_the_special_tokens_it_adds(fixtures_dir: Path, store: ArtifactStore, tmp_path: Path):
    tokenizer = Path(shutil.copytree(fixtures_dir / "tiny-bpe", tmp_path / "no-eos"))
    config = json.loads((tokenizer / "tokenizer_config.json").read_text())
    del config["eos_token"]
    (tokenizer / "tokenizer_config.json").write_text(json.dumps(config))
    pipeline = one_stage_pipeline("data_prep/pretrain_prep", DATA / "tiny_corpus.jsonl", tokenizer=str(tokenizer))
    with pytest.raises(NamedError, match="tokenizer_mismatch: .* has no EOS token"):
        materialize(pipeline, store)
    assert materialize(pipeline, store, add_eos=False).stats["documents"] == 192


def artifact_files(path: Path) -> dict[str, bytes]:
    """Every file the step wrote, by relative path (not the provenance: it records timings)."""
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != PROVENANCE_FILE
    }


SHARDED_STEPS = {
    "data_prep/pretrain_prep": (DATA / "tiny_corpus.jsonl", {"max_doc_tokens": 24}, "truncated"),
    "data_prep/sft_packing": (DATA / "tiny_chat.jsonl", {"pack_size": 96}, "truncated"),
}


@pytest.mark.parametrize("step", SHARDED_STEPS)
def test_same_artifact_for_any_number_of_workers(fixtures_dir: Path, tmp_path: Path, step: str):
    source, config, nonzero = SHARDED_STEPS[step]
    pipeline = one_stage_pipeline(step, source, **config)
    results = {
        cpus: materialize(pipeline, ArtifactStore(root=str(tmp_path / str(cpus))), cpus=cpus) for cpus in (1, 2, 4)
    }
    files = {cpus: artifact_files(result.path) for cpus, result in results.items()}
    assert len([name for name in files[1] if name.startswith("shards/")]) >= 4  # one shard per worker at least
    assert files[2] == files[1] and files[4] == files[1]
    assert results[1].stats == results[2].stats == results[4].stats
    assert results[1].stats[nonzero] > 0


def test_ray_tasks_make_the_local_pool_artifact(fixtures_dir: Path, tmp_path: Path):
    """On several nodes the shards go to Ray tasks (here a local Ray head of 2 CPUs, shared by both steps)."""
    from nemotron_assets.steps import ray_cluster

    try:
        for step, (source, config, _) in SHARDED_STEPS.items():
            pipeline = one_stage_pipeline(step, source, **config)
            pool = materialize(pipeline, ArtifactStore(root=str(tmp_path / step / "pool")), cpus=2)
            on_ray = materialize(pipeline, ArtifactStore(root=str(tmp_path / step / "ray")), cpus=2, nodes=2)
            assert artifact_files(on_ray.path) == artifact_files(pool.path)
            assert on_ray.stats == pool.stats
            assert ray_cluster._local["cpus"] == 2  # the local head, started once, reused by the second step
    finally:
        ray_cluster.stop_local()


def split_corpus(directory: Path, bad_line: int | None = None) -> list[Path]:
    """The tiny corpus as two files with blank lines, optionally with line `bad_line` of the second file broken."""
    lines = (DATA / "tiny_corpus.jsonl").read_text().splitlines(keepends=True)
    first, second = directory / "a.jsonl", directory / "b.jsonl"
    first.write_text("\n".join(lines[:50]))  # a blank line after every record
    second.write_text("\n\n" + "".join(lines[50:]))
    if bad_line is not None:
        text = second.read_text().splitlines(keepends=True)
        text[bad_line - 1] = '{"text": "unterminated\n'
        second.write_text("".join(text))
    return [first, second]


def test_row_shards_start_where_a_single_stream_would(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from nemotron_assets.artifacts.jsonl import iter_lines
    from nemotron_assets.steps.data_prep import sharding

    files = split_corpus(tmp_path)
    lines = list(iter_lines(files))
    for max_marks in (2, 6, 1 << 16):  # the stride doubles several times, or every line is marked
        monkeypatch.setattr(sharding, "MAX_MARKS", max_marks)
        for shards, limit in ((1, None), (4, None), (7, 150), (192, None)):
            cut = sharding.row_shards(files, shards, limit)
            rows = len(lines) if limit is None else limit
            bounds = [rows * k // shards for k in range(shards + 1)]
            assert [list(s.lines()) for s in cut] == [lines[a:b] for a, b in pairwise(bounds)]


def test_pretrain_prep_worker_error_names_file_and_line(fixtures_dir: Path, store: ArtifactStore, tmp_path: Path):
    broken = split_corpus(tmp_path, bad_line=130)[1]  # the 128th record of b.jsonl: the last of 4 shards
    with pytest.raises(NamedError) as caught:
        materialize(one_stage_pipeline("data_prep/pretrain_prep", tmp_path), store, cpus=4)
    assert caught.value.name == "malformed_jsonl"
    assert caught.value.detail.startswith(f"{broken}:130: ")
    assert published(store) == []


THREAD_PROBE = """
import json, os, sys, time
from pathlib import Path
from nemotron_assets.catalog import CATALOG
from nemotron_assets.steps import InputArtifact, StepRun, step_function

cpus, output, corpus, tokenizer = json.loads(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
step = CATALOG.step("data_prep/pretrain_prep")
params = step.preset_values("tiny") | {"tokenizer": tokenizer, "num_shards": 1, "valid_shards": 0, "test_shards": 0}
output.mkdir()
run = StepRun(step, params, {"filtered_jsonl": InputArtifact("data", "filtered_jsonl", corpus, "v")}, output, cpus=cpus)
before = len(os.listdir("/proc/self/task"))
step_function(step)(run)
counts = []
for _ in range(20):  # the encoder pool's threads stay; short-lived helper threads end
    counts.append(len(os.listdir("/proc/self/task")))
    time.sleep(0.05)
print(json.dumps({"threads": min(counts) - before, "env": os.environ["RAYON_NUM_THREADS"]}))
"""


def test_in_process_encoder_threads_follow_the_profile_cpus(tokenizer_dir: Path, tmp_path: Path):
    """One worker in process (one CPU, or one shard): the Rust encoder's pool gets the profile's CPUs, and none for
    one CPU, where the process's environment asks for 4 (as every core would on a bigger machine). Threads the step
    starts are counted in a fresh process, against a run with the CPUs unknown (uncapped)."""
    env = os.environ | {"RAYON_NUM_THREADS": "4", "PYTHONPATH": os.pathsep.join(sys.path)}
    started = {}
    for cpus in (None, 1, 3):
        probe = [sys.executable, "-c", THREAD_PROBE, json.dumps(cpus), str(tmp_path / str(cpus))]
        probe += [str(DATA / "tiny_corpus.jsonl"), str(tokenizer_dir)]
        done = json.loads(subprocess.run(probe, env=env, capture_output=True, text=True, check=True).stdout)
        assert done["env"] == "4"  # restored after the step
        started[cpus] = done["threads"]
    assert started[None] - started[1] == 4  # no pool at all for one CPU
    assert started[None] - started[3] == 1  # a pool of 3, not 4
