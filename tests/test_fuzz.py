"""Seeded mutations of every contract's files: each ends in stats or a named error with recovery text, never a
traceback; a step fed a mutated input publishes nothing unless the input still passes its contract."""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import DATA
from helpers import materialize, one_stage_pipeline, published

from nemotron_assets.artifacts import validate
from nemotron_assets.errors import NamedError
from resources.artifact_store import ArtifactStore

SEEDS = range(int(os.environ.get("FUZZ_SEEDS", "16")))


DEEP = "[" * 5000 + "]" * 5000  # deeper than any JSON parser recurses


def mutate_json(data: bytes, rng: random.Random) -> bytes:
    """One JSON value (a document, or a random line of JSONL) with a random field dropped, retyped or nested deep."""
    lines = data.splitlines(keepends=True) or [b"{}"]
    index = rng.randrange(len(lines))
    try:
        document = json.loads(lines[index])
    except ValueError:
        return data
    if isinstance(document, dict) and document:
        key = rng.choice(sorted(document))
        choice = rng.randrange(4)
        if choice == 0:
            del document[key]
        else:
            document[key] = [None, 7, "x", "@DEEP@"][choice]
    else:
        document = "@DEEP@"
    lines[index] = (json.dumps(document).replace('"@DEEP@"', DEEP) + "\n").encode()
    return b"".join(lines)


MUTATIONS: dict[str, Callable[[bytes, random.Random], bytes]] = {
    "truncate": lambda data, rng: data[: rng.randrange(len(data) + 1)],
    "flip bytes": lambda data, rng: bytes(b ^ 0xFF if rng.random() < 0.01 else b for b in data) if data else b"\x00",
    "invalid utf-8": lambda data, rng: (lambda i: data[:i] + b"\xff\xfe\xc3" + data[i:])(rng.randrange(len(data) + 1)),
    "empty": lambda data, rng: b"",
    "garbage line": lambda data, rng: data + b"\x00not json at all\n",
    "json field": mutate_json,
    "duplicate": lambda data, rng: data + data,
}


def mutated(artifact: Path, destination: Path, seed: int) -> tuple[Path, str]:
    """A copy of `artifact` with one seeded mutation of one of its files (or a file deleted)."""
    rng = random.Random(seed)
    copy = Path(
        shutil.copytree(artifact, destination, symlinks=True)
        if artifact.is_dir()
        else shutil.copy(artifact, destination)
    )
    files = [copy] if copy.is_file() else sorted(p for p in copy.rglob("*") if p.is_file() and not p.is_symlink())
    target = rng.choice(files)
    if copy.is_dir() and rng.random() < 0.15:
        target.unlink()
        return copy, f"deleted {target.relative_to(copy)}"
    name = rng.choice(sorted(MUTATIONS))
    target.write_bytes(MUTATIONS[name](target.read_bytes(), rng))
    return copy, f"{name} of {target.name}"


def write_megatron(path: Path) -> Path:
    """The files of a torch_dist checkpoint the contract reads (their tensors are not loaded)."""
    iteration = path / "iter_0000010"
    iteration.mkdir(parents=True)
    (iteration / "metadata.json").write_text(
        json.dumps({"sharded_backend": "torch_dist", "sharded_backend_version": 1})
    )
    for name in (".metadata", "common.pt", "__0_0.distcp"):
        (iteration / name).write_bytes(bytes(range(64)))
    (path / "latest_checkpointed_iteration.txt").write_text("10\n")
    return path


def write_eval_results(path: Path) -> Path:
    path.mkdir()
    (path / "results.json").write_text(
        json.dumps({"scores": {"mcq": {"acc": 0.5}}, "higher_is_better": {"mcq": {"acc": True}}})
    )
    (path / "settings.json").write_text(json.dumps({"batch_size": 8, "limit": None}))
    (path / "checkpoint.json").write_text(json.dumps({"path": "/models/x", "version": "abc"}))
    return path


def write_lora(path: Path, fixtures_dir: Path) -> Path:
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}))
    shutil.copy(fixtures_dir / "tiny-llama" / "model.safetensors", path / "adapter_model.safetensors")
    base = {"name_or_path": "tiny-llama", "fingerprint": "abc123"}
    (path / "provenance.json").write_text(json.dumps({"type": "checkpoint_lora", "base_model": base}))
    return path


def published_path(step: str, source: Path, store: ArtifactStore) -> Path:
    return materialize(one_stage_pipeline(step, source), store).path


@pytest.fixture(scope="module")
def artifacts(fixtures_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, Path]]:
    """One valid artifact of every contract: name -> (type, path)."""
    root = tmp_path_factory.mktemp("valid")
    store = ArtifactStore(root=str(root / "store"))
    env = root / "env.toml"
    env.write_text('[local]\nexecutor = "local"\n\n[gpu]\nextends = "local"\nnum_gpus = 1\n')
    made = {
        "chat": ("training_jsonl", DATA / "tiny_chat.jsonl"),
        "dpo": ("training_jsonl", DATA / "tiny_dpo.jsonl"),
        "rlvr": ("training_jsonl", DATA / "tiny_rlvr.jsonl"),
        "text": ("filtered_jsonl", DATA / "tiny_corpus.jsonl"),
        "packed": ("packed_parquet", published_path("data_prep/sft_packing", DATA / "tiny_chat.jsonl", store)),
        "binidx": ("binidx", published_path("data_prep/pretrain_prep", DATA / "tiny_corpus.jsonl", store)),
        "hf": ("checkpoint_hf", fixtures_dir / "tiny-llama"),
        "lora": ("checkpoint_lora", write_lora(root / "lora", fixtures_dir)),
        "megatron": ("checkpoint_megatron", write_megatron(root / "megatron")),
        "eval": ("eval_results", write_eval_results(root / "eval")),
        "mcq": ("mcq_benchmark_parquet", DATA / "tiny_mcq.parquet"),
        "env": ("env_toml", env),
    }  # fmt: skip
    for type_name, path in made.values():
        validate(path, type_name)
    return made


@pytest.mark.parametrize(
    "name", ["chat", "dpo", "rlvr", "text", "packed", "binidx", "hf", "lora", "megatron", "eval", "mcq", "env"]
)
def test_mutated_artifacts_end_in_stats_or_a_named_error(artifacts, name: str, tmp_path: Path):
    type_name, artifact = artifacts[name]
    outcomes = {}
    for seed in SEEDS:
        copy, mutation = mutated(artifact, tmp_path / f"{seed}{artifact.suffix}", seed)
        try:
            validate(copy, type_name)
            outcomes[mutation] = "valid"
        except NamedError as e:
            assert e.recovery.strip(), (mutation, e)
            outcomes[mutation] = e.name
        except Exception as e:  # noqa: BLE001 (the point: anything but a named error fails, with its seed)
            pytest.fail(f"{name}, seed {seed}, {mutation}: {type(e).__name__}: {e}")
    assert set(outcomes.values()) - {"valid"}, outcomes  # the mutations are not all harmless


STEP_INPUTS = {  # a step reading each kind of input, and its fixture
    "data_prep/sft_packing": "chat",
    "data_prep/split": "chat",
    "data_prep/rl_prep": "dpo",
    "data_prep/pretrain_prep": "text",
}


@pytest.mark.parametrize("step", sorted(STEP_INPUTS))
def test_a_step_fed_mutated_input_publishes_nothing(artifacts, step: str, tmp_path: Path):
    type_name, artifact = artifacts[STEP_INPUTS[step]]
    for seed in SEEDS:
        copy, mutation = mutated(artifact, tmp_path / f"{seed}.jsonl", seed)
        store = ArtifactStore(root=str(tmp_path / f"store{seed}"))
        config = {"kind": "dpo"} if step == "data_prep/rl_prep" else {}
        try:
            materialize(one_stage_pipeline(step, copy, **config), store)
        except NamedError as e:
            assert e.recovery.strip() and published(store) in ([], [".work"]), (mutation, e)
            continue
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"{step}, seed {seed}, {mutation}: {type(e).__name__}: {e}")
        validate(copy, type_name)  # it published: its input was still valid
