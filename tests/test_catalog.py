"""The catalog loads, is consistent, and its loader rejects inconsistent files."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest
from helpers import import_closure, module_file, syntax_tree

from nemotron_assets.catalog import CATALOG, CATALOG_DIR, CatalogError, load_catalog
from nemotron_assets.catalog.models import StepSpec

SEED_STEPS = {
    "byob/mcq", "curate/nemo_curator", "translate/nemo_curator", "sdg/data_designer", "data_prep/sft_packing",
    "data_prep/pretrain_prep", "data_prep/rl_prep", "sft/automodel", "sft/megatron_bridge", "peft/automodel",
    "peft/megatron_bridge", "pretrain/automodel", "pretrain/megatron_bridge", "rl/nemo_rl/dpo", "rl/nemo_rl/rlvr",
    "rl/nemo_rl/rlhf", "convert/hf_to_megatron", "convert/megatron_to_hf", "convert/merge_lora",
    "optimize/modelopt/quantize", "optimize/modelopt/prune", "optimize/modelopt/distill", "eval/model_eval",
    "env/env_toml",
}  # fmt: skip
PROJECT_STEPS = {"data_prep/blend", "data_prep/split"}  # beyond the seed catalog: drops blended; a held-out split


def test_all_seed_steps_and_types():
    assert set(CATALOG.steps) == SEED_STEPS | PROJECT_STEPS
    assert len(CATALOG.types) == 16


def test_is_a_is_transitive():
    assert CATALOG.ancestors("translated_mcq_benchmark_parquet") == ["mcq_benchmark_parquet", "benchmark_parquet"]
    assert CATALOG.is_a("translated_mcq_benchmark_parquet", "benchmark_parquet")
    assert not CATALOG.is_a("benchmark_parquet", "mcq_benchmark_parquet")


def test_converters_bridge_their_types():
    assert CATALOG.types["checkpoint_lora"].convert_to == {"checkpoint_hf": "convert/merge_lora"}
    assert CATALOG.types["checkpoint_megatron"].convert_to == {"checkpoint_hf": "convert/megatron_to_hf"}


def test_every_step_has_errors_and_a_default_or_named_preset():
    for step in CATALOG.steps.values():
        assert step.errors, step.id
        assert step.presets, step.id
        assert all(e.recovery.strip() for e in step.errors), step.id


def test_find_steps_is_is_a_aware():
    # filtered_jsonl is_a training_jsonl, so every training_jsonl consumer accepts it
    accepting = {s.id for s in CATALOG.find_steps(consumes="filtered_jsonl")}
    assert {"data_prep/sft_packing", "sft/automodel", "data_prep/pretrain_prep", "translate/nemo_curator"} <= accepting
    assert "data_prep/pretrain_prep" not in {s.id for s in CATALOG.find_steps(consumes="training_jsonl")}
    producing = {s.id for s in CATALOG.find_steps(produces="training_jsonl")}
    assert {"curate/nemo_curator", "translate/nemo_curator", "sdg/data_designer", "data_prep/rl_prep"} <= producing
    assert {s.id for s in CATALOG.find_steps(category="convert")} == {
        "convert/hf_to_megatron", "convert/megatron_to_hf", "convert/merge_lora"
    }  # fmt: skip


def launches(step: StepSpec) -> set[str]:
    """How the step's code launches work, read from its entry module and the modules of its package that it
    imports: "process" for a launch without a process count, "torchrun" for one given nproc_per_node or torchrun."""
    module = step.entry.split(":")[0]
    found = set()
    for path in import_closure([module_file(module)], module.rsplit(".", 1)[0] + "."):
        for node in ast.walk(syntax_tree(path)):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("launch_job", "launch"):
                counted = any(k.arg in ("nproc_per_node", "torchrun") for k in node.keywords)
                found.add("torchrun" if counted else "process")
    return found


@pytest.mark.parametrize("step", [s for s in CATALOG.steps.values() if s.entry], ids=lambda s: s.id)
def test_backend_says_how_the_step_runs(step: StepSpec):
    """in_process launches nothing; process launches one process; torchrun and ray launch a job."""
    expected = {"in_process": set(), "process": {"process"}, "ray": {"process"}}.get(step.backend)
    found = launches(step)
    assert found == expected if expected is not None else "torchrun" in found, (step.backend, found)


def test_unknown_step_suggests_close_ids():
    with pytest.raises(KeyError, match="sft_packing"):
        CATALOG.step("data_prep/sft_pack")


@pytest.fixture
def catalog_copy(tmp_path: Path) -> Path:
    shutil.copytree(CATALOG_DIR, tmp_path / "catalog", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return tmp_path / "catalog"


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(
    ("file", "old", "new", "message"),
    [
        ("types.toml", 'kind = "json"\n', 'kind = "json"\nis_a = ["raw_jsonl"]\n', "cycle"),
        ("types.toml", '"convert/merge_lora"', '"convert/nope"', "does not exist"),
        ("types.toml", 'is_a = ["benchmark_parquet"]', 'is_a = ["nonexistent"]', "unknown type"),
        ("steps/data_prep/rl_prep.toml", 'type = "training_jsonl"', 'type = "jsonl_of_doom"', "unknown artifact type"),
        (
            "steps/data_prep/rl_prep.toml",
            'id = "data_prep/rl_prep"',
            'id = "data_prep/sft_packing"',
            "duplicate step id",
        ),
        ("steps/data_prep/rl_prep.toml", "[presets.tiny]\n", "[presets.tiny]\nnot_a_param = 1\n", "unknown parameter"),
        ("steps/data_prep/rl_prep.toml", 'default = "auto"', 'default = "sometimes"', "not in choices"),
        ("steps/data_prep/rl_prep.toml", 'name = "split_seed"', 'name = "kind.seed"', "both parameters and groups"),
        ("steps/sft/automodel.toml", 'fed = "packed_parquet"', 'fed = "packed_jsonl"', "fed unknown type"),
    ],
)
def test_loader_rejects_inconsistent_catalogs(catalog_copy: Path, file: str, old: str, new: str, message: str):
    _edit(catalog_copy / file, old, new)
    with pytest.raises((CatalogError, ValueError), match=message):
        load_catalog(catalog_copy)


SEED_CATALOG = Path(__file__).resolve().parents[2] / "shared" / "seeds" / "step-catalog.md"
# docs/decisions.md "The catalog says what the code does": byob's translate stage reads only a benchmark_parquet
LOOSENED = {("byob/mcq", "benchmark_source_corpus")}


def seed_ports(cell: str) -> tuple[set[str], set[str]]:
    """(required, optional) types of a seed table cell such as "`packed_parquet`; optional `checkpoint_megatron`"."""
    required: set[str] = set()
    optional: set[str] = set()
    for part in cell.split(";"):
        (optional if part.strip().startswith("optional") else required).update(re.findall(r"`(\w+)`", part))
    return required, optional


def test_consumes_and_produces_are_the_seed_catalogs():
    """Every step keeps the seed table's contract: its required inputs required, its optional ones accepted, no
    input required that the seed does not require, its product first and its optional products declared."""
    rows = [line for line in SEED_CATALOG.read_text().splitlines() if line.startswith("| `")]
    assert {row.split("`")[1] for row in rows} == SEED_STEPS
    for row in rows:
        step_id, _, consumes, produces = (cell.strip() for cell in row.strip("|").split("|")[:4])
        step = CATALOG.step(step_id.strip("`"))
        required, optional = seed_ports(consumes)
        ours = {port.type: port.required for port in step.consumes}
        loosened = {t for s, t in LOOSENED if s == step.id}
        assert {t for t in required - loosened if not ours.get(t)} == set(), step.id
        assert (optional | loosened) - set(ours) == set() and not any(ours[t] for t in loosened), step.id
        assert {t for t, needed in ours.items() if needed} - required == set(), step.id
        product, optional_products = seed_ports(produces)
        assert product == {step.primary_output}, step.id
        assert optional_products <= {port.type for port in step.produces}, step.id
