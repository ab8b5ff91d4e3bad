"""checkpoint_megatron contract: a complete torch_dist iter_NNNNNNN directory, direct or through its tracker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nemotron_assets.artifacts import validate
from nemotron_assets.artifacts.checkpoints import megatron_iteration_dir
from nemotron_assets.catalog import CATALOG
from nemotron_assets.errors import NamedError

METADATA = {"sharded_backend": "torch_dist", "sharded_backend_version": 1, "common_backend": "torch"}


def megatron_run(root: Path, iterations=(5, 10), latest: int | None = 10) -> Path:
    """The layout Megatron-Bridge 0.3.1 writes under checkpoint.save (seen from save_megatron_model)."""
    for iteration in iterations:
        step = root / f"iter_{iteration:07d}"
        step.mkdir(parents=True)
        (step / "metadata.json").write_text(json.dumps(METADATA))
        for name in (".metadata", "common.pt", "__0_0.distcp", "__0_1.distcp", "train_state.pt", "run_config.yaml"):
            (step / name).write_bytes(b"x")
    if latest is not None:
        (root / "latest_checkpointed_iteration.txt").write_text(str(latest))
    return root


def test_concrete_iteration_directory(tmp_path: Path):
    run = megatron_run(tmp_path / "run")
    stats = validate(run / "iter_0000005", "checkpoint_megatron")
    assert stats["iteration"] == 5 and stats["latest_iteration"] == 10
    assert stats["checkpoint_format"] == "torch_dist" and stats["shards"] == 2 and stats["has_run_config"]


def test_run_directory_resolves_to_its_tracked_iteration(tmp_path: Path):
    run = megatron_run(tmp_path / "run")
    assert megatron_iteration_dir(run) == run / "iter_0000010"
    assert validate(run, "checkpoint_megatron")["iteration_dir"] == "iter_0000010"


def expect(error: str, path: Path) -> None:
    with pytest.raises(NamedError) as e:
        validate(path, "checkpoint_megatron")
    assert e.value.name == error and e.value.recovery == CATALOG.contract_errors[error]


def test_folder_without_tracker_or_iteration_name(tmp_path: Path):
    run = megatron_run(tmp_path / "run", latest=None)
    expect("bad_megatron_checkpoint_path", run)
    assert "iter_NNNNNNN" in CATALOG.contract_errors["bad_megatron_checkpoint_path"]


def test_tracker_naming_a_missing_iteration(tmp_path: Path):
    expect("incomplete_megatron_checkpoint", megatron_run(tmp_path / "run", latest=20))


def test_common_state_inside_the_shards(tmp_path: Path):
    """Megatron-Core >= 0.17 keeps the common state as a "common_state" object in the shards, named in .metadata,
    and writes no common.pt."""
    step = megatron_run(tmp_path / "run", iterations=(10,)) / "iter_0000010"
    (step / "common.pt").unlink()
    (step / ".metadata").write_bytes(b"\x80\x04...\x8c\x17common_state/shard_0_1...")
    assert validate(step, "checkpoint_megatron")["iteration"] == 10


@pytest.mark.parametrize("lost", ["metadata.json", ".metadata", "common.pt", "__0_0.distcp"])
def test_incomplete_save(tmp_path: Path, lost: str):
    run = megatron_run(tmp_path / "run", iterations=(10,))
    for shard in run.glob("iter_0000010/*.distcp") if lost.endswith(".distcp") else [run / "iter_0000010" / lost]:
        shard.unlink()
    expect("incomplete_megatron_checkpoint", run / "iter_0000010")


def test_hf_consumer_handed_a_megatron_checkpoint_names_the_export(tmp_path: Path):
    run = megatron_run(tmp_path / "run")
    with pytest.raises(NamedError) as e:
        validate(run, "checkpoint_hf")
    assert e.value.name == "artifact_type_mismatch" and "convert/megatron_to_hf" in str(e.value)
