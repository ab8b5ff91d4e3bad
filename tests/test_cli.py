"""The CLI's JSON surface: steps list/show, types, validate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import DATA

STEP_KEYS = {"id", "category", "description", "consumes", "produces", "parameters", "errors", "presets", "min_gpus"}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nemotron_assets.cli", *args], capture_output=True, text=True)


def cli_json(*args: str):
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_steps_list_json_shape():
    steps = cli_json("steps", "list", "--json")
    assert len(steps) == 26  # the seed catalog's 24, data_prep/blend (partitioned corpora) and data_prep/split
    for step in steps:
        assert step.keys() >= STEP_KEYS
        assert all(p.keys() >= {"type", "required"} for p in step["consumes"] + step["produces"])
        assert all(p.keys() >= {"name", "default", "choices", "description"} for p in step["parameters"])
        assert all(e.keys() == {"name", "recovery"} for e in step["errors"])
    packing = next(s for s in steps if s["id"] == "data_prep/sft_packing")
    assert packing["produces"] == [{"type": "packed_parquet", "required": True}]
    assert packing["presets"] == ["default", "tiny"]
    algorithm = next(p for p in packing["parameters"] if p["name"] == "algorithm")
    assert algorithm["choices"] == ["first_fit_decreasing", "first_fit_shuffle", "concatenative"]


def test_steps_list_filters():
    ids = lambda *args: {s["id"] for s in cli_json("steps", "list", "--json", *args)}  # noqa: E731
    assert ids("--category", "rl") == {"rl/nemo_rl/dpo", "rl/nemo_rl/rlvr", "rl/nemo_rl/rlhf"}
    assert ids("--produces", "packed_parquet") == {"data_prep/sft_packing"}
    assert "sft/automodel" in ids("--consumes", "synthetic_jsonl")  # synthetic_jsonl is_a training_jsonl
    assert ids("--produces", "benchmark_parquet") == {"byob/mcq"}  # mcq_benchmark_parquet is_a benchmark_parquet
    assert cli("steps", "list", "--consumes", "nope").returncode == 2


def test_steps_show_and_types():
    shown = cli_json("steps", "show", "data_prep/pretrain_prep", "--json")
    assert shown["id"] == "data_prep/pretrain_prep"
    assert shown["presets"]["tiny"]["num_shards"] == 4
    assert cli("steps", "show", "no/such").returncode == 2
    types = cli_json("types", "--json")
    assert types["translated_mcq_benchmark_parquet"]["is_a"] == ["mcq_benchmark_parquet", "benchmark_parquet"]
    assert types["checkpoint_hf"]["convert_to"] == {"checkpoint_megatron": "convert/hf_to_megatron"}


def test_validate_prints_stats_or_the_named_error(tmp_path: Path):
    assert cli_json("validate", str(DATA / "tiny_chat.jsonl"), "--type", "training_jsonl") == {
        "type": "training_jsonl", "files": 1, "records": 48, "shape": "chat"
    }  # fmt: skip
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "human", "content": "hi"}]}\n')
    result = cli("validate", str(bad), "--type", "training_jsonl")
    assert result.returncode == 1
    error = json.loads(result.stdout)
    assert error["error"] == "invalid_role" and "map ShareGPT" in error["recovery"]
    assert cli("validate", str(bad), "--type", "benchmark_source_corpus").returncode == 2  # no contract yet


def test_fixtures_build_defaults_to_the_tiny_ones(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("NEMOTRON_FIXTURES", str(tmp_path))
    result = cli("fixtures", "build")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-bpe", "tiny-llama"]
    assert cli("fixtures", "build", "nope").returncode == 2
