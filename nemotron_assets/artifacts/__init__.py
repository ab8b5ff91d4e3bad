"""Artifact contracts: one validator per artifact family, used by blocking asset checks, steps and the CLI."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from nemotron_assets.artifacts.benchmark import validate_mcq_benchmark
from nemotron_assets.artifacts.binidx import validate_binidx
from nemotron_assets.artifacts.checkpoints import (
    validate_checkpoint_hf,
    validate_checkpoint_lora,
    validate_checkpoint_megatron,
)
from nemotron_assets.artifacts.env_toml import validate_env_toml
from nemotron_assets.artifacts.eval_results import validate_eval_results
from nemotron_assets.artifacts.files import sniff_type
from nemotron_assets.artifacts.jsonl import CORPUS_SHAPES, TRAINING_SHAPES, validate_jsonl
from nemotron_assets.artifacts.packed_parquet import validate_packed_parquet
from nemotron_assets.catalog import CATALOG
from nemotron_assets.errors import contract_error

Contract = Callable[[Path], dict[str, Any]]

JSONL_TYPES = ("raw_jsonl", "filtered_jsonl", "translated_jsonl", "synthetic_jsonl")
CONTRACTS: dict[str, Contract] = {
    "training_jsonl": partial(validate_jsonl, shapes=TRAINING_SHAPES),
    **{t: partial(validate_jsonl, shapes=CORPUS_SHAPES) for t in JSONL_TYPES},
    "packed_parquet": validate_packed_parquet,
    "binidx": validate_binidx,
    "env_toml": validate_env_toml,
    "checkpoint_hf": validate_checkpoint_hf,
    "checkpoint_lora": validate_checkpoint_lora,
    "checkpoint_megatron": validate_checkpoint_megatron,
    "eval_results": validate_eval_results,
    "mcq_benchmark_parquet": validate_mcq_benchmark,
    "translated_mcq_benchmark_parquet": validate_mcq_benchmark,
}


def has_contract(type_name: str) -> bool:
    return type_name in CONTRACTS


PARQUET_TYPES = ("packed_parquet", "benchmark_parquet", "mcq_benchmark_parquet", "translated_mcq_benchmark_parquet")


def family(type_name: str) -> str:
    """The on-disk family of a type: without provenance, all JSONL (or all Parquet) artifacts look alike."""
    if type_name in (*JSONL_TYPES, "training_jsonl"):
        return "jsonl"
    return "parquet" if type_name in PARQUET_TYPES else type_name


def check_type(path: Path, expected: str, found: str | None) -> None:
    """artifact_type_mismatch when `path`, which looks like `found` (sniff_type), holds another artifact type than
    `expected`, naming the fix."""
    if found is None or found not in CATALOG.types:
        return
    recorded = (path / "provenance.json").exists()
    compatible = CATALOG.is_a(found, expected) if recorded else family(found) == family(expected)
    if not compatible:
        fixes = [s.id for s in CATALOG.find_steps(consumes=found, produces=expected)]
        hint = f"; convert with {' or '.join(fixes)}" if fixes else ""
        raise contract_error("artifact_type_mismatch", f"{path} holds {found}, the consumer needs {expected}{hint}")


def validate(path: Path, type_name: str) -> dict[str, Any]:
    """Validate `path` as `type_name`; return its stats or raise the contract's named error."""
    if type_name not in CATALOG.types:
        raise KeyError(f"unknown artifact type {type_name!r}; known: {sorted(CATALOG.types)}")
    if not has_contract(type_name):
        raise NotImplementedError(f"no contract for {type_name} yet; contracts exist for {sorted(CONTRACTS)}")
    if not Path(path).exists() and "*" not in str(path):
        raise contract_error("artifact_missing", f"{path}: does not exist")
    check_type(Path(path), type_name, sniff_type(Path(path)))
    return {"type": type_name} | CONTRACTS[type_name](Path(path))
