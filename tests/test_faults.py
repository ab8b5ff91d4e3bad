"""kill -9 of the tiny pipeline (its data stages and the LoRA) at seeded points, then a run to the end: no published
version is ever incomplete, CURRENT always names a valid one, no staging is left after the finishing run, and the
versions and data bytes equal those of a clean run into another store."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from nemotron_assets.artifacts import validate
from nemotron_assets.artifacts.files import read_provenance
from resources.artifact_store import verify

BIN = Path(sys.executable).parent
STAGES = ("chat_split", "packed_parquet", "binidx", "dpo_data", "rlvr_data", "lora")
DATA_STAGES = STAGES[:-1]
KILLS = 3


def materialize(root: Path, home: Path) -> subprocess.Popen:
    """The stages through `dagster asset materialize`, in their own process group (the run and its step processes)."""
    select = ",".join(f"tiny/{name}" for name in STAGES)
    command = [str(BIN / "dagster"), "asset", "materialize", "-m", "nemotron_assets.definitions", "--select", select]
    env = os.environ | {"NEMOTRON_ARTIFACT_ROOT": str(root), "DAGSTER_HOME": str(home)}
    return subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def instance_home(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return directory


def staging(root: Path) -> set[str]:
    return {p.name for p in root.rglob("*.tmp-*")} if root.exists() else set()


def published_versions(root: Path) -> dict[str, str]:
    """{stage: the version CURRENT names}, after checking every published version is complete and valid and
    every CURRENT names one of them."""
    for provenance_file in root.glob("tiny/*/*/provenance.json"):
        version = provenance_file.parent
        if not version.name.startswith("."):
            verify(version, full=True)
            validate(version, read_provenance(version)["type"])
    current = {}
    for pointer in root.glob("tiny/*/CURRENT"):
        version = pointer.read_text().strip()
        assert (pointer.parent / version / "provenance.json").exists(), pointer
        current[pointer.parent.name] = version
    return current


def data_bytes(root: Path, versions: dict[str, str]) -> dict[str, dict[str, str]]:
    return {name: read_provenance(root / "tiny" / name / versions[name])["files"] for name in DATA_STAGES}


def test_killed_runs_publish_nothing_incomplete_and_finish_like_a_clean_run(fixtures_dir: Path, tmp_path: Path):
    clean_root = tmp_path / "clean"
    clean = materialize(clean_root, instance_home(tmp_path / "home_clean"))
    assert clean.wait() == 0, clean.stderr.read().decode()[-3000:]
    expected = published_versions(clean_root)
    assert set(expected) == set(STAGES)

    rng = random.Random(int(os.environ.get("FAULT_SEED", "0")))
    root, home = tmp_path / "faulted", instance_home(tmp_path / "home")
    killed_during = []
    for _ in range(KILLS):
        run = materialize(root, home)
        seen, wanted = staging(root), rng.randint(1, 3)
        started = set()
        while run.poll() is None and len(started) < wanted:
            started |= staging(root) - seen
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 2.0))
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            killed_during.append(sorted(staging(root)))
        run.wait()
        published_versions(root)  # every published version complete and valid, every CURRENT valid
    assert killed_during, "no run was killed: the pipeline ended before every kill point"

    finish = materialize(root, home)
    assert finish.wait() == 0, finish.stderr.read().decode()[-3000:]
    versions = published_versions(root)
    assert versions == expected
    assert data_bytes(root, versions) == data_bytes(clean_root, expected)
    assert staging(root) == set(), "staging of the killed runs is left"
    assert [p for name in STAGES for p in (root / "tiny" / name / ".work").glob("*")] == []
