"""The NemotronPipeline component through the real `dg` CLI, on a copy of this project: scaffold, check, list."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nemotron_assets.paths import PROJECT_ROOT

DG = Path(sys.executable).with_name("dg")
COMPONENT = "nemotron_assets.components.NemotronPipeline"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This project (package and pyproject) copied, with `my_sft` scaffolded into its defs folder."""
    root = tmp_path_factory.mktemp("project")
    for name in ("pyproject.toml", "nemotron_assets", "resources"):
        source = PROJECT_ROOT / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, root / name)
    assert dg(root, "scaffold", "defs", COMPONENT, "my_sft").returncode == 0
    return root


def dg(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONPATH": str(root), "DAGSTER_DISABLE_TELEMETRY": "1", "NO_COLOR": "1"}
    return subprocess.run([str(DG), *args], cwd=root, env=env, capture_output=True, text=True, timeout=300)


def defs_yaml(project: Path) -> Path:
    return project / "nemotron_assets" / "defs" / "my_sft" / "defs.yaml"


def check_edited(project: Path, old: str, new: str, what: str) -> subprocess.CompletedProcess[str]:
    """`dg check <what>` with `old` replaced by `new` in my_sft's defs.yaml (restored afterwards)."""
    original = defs_yaml(project).read_text()
    assert old in original
    defs_yaml(project).write_text(original.replace(old, new, 1))
    try:
        return dg(project, "check", what)
    finally:
        defs_yaml(project).write_text(original)


def test_scaffolded_pipeline_is_listed_beside_the_shipped_ones(project: Path):
    assert f"type: {COMPONENT}" in defs_yaml(project).read_text()
    assert dg(project, "check", "yaml").returncode == 0
    listed = dg(project, "list", "defs", "--json")
    assert listed.returncode == 0, listed.stderr
    keys = {asset["asset_key"] for asset in json.loads(listed.stdout)["assets"]}
    assert {"my_sft/chat_split", "my_sft/sft", "my_sft/eval_base_model", "my_sft/eval_sft"} <= keys
    assert {"tiny/lora", "cpt/cpt"} <= keys  # the shipped pipelines still load
    checks = {(c["asset_key"], c["name"]) for c in json.loads(listed.stdout)["asset_checks"]}
    assert ("my_sft/eval_sft", "quality_gate") in checks


@pytest.mark.parametrize(
    ("edit", "reported"),
    [
        (("type: checkpoint_hf", "type: checkpoint_hff"), "'checkpoint_hff' is not one of"),
        (("preset: tiny\n      config:", "presett: tiny\n      config:"), "('presett' was unexpected)"),
    ],
)
def test_check_yaml_reports_the_line(project: Path, edit: tuple[str, str], reported: str):
    text = defs_yaml(project).read_text()
    line = text[: text.index(edit[0])].count("\n") + 1
    result = check_edited(project, *edit, "yaml")
    assert result.returncode != 0
    assert f"my_sft/defs.yaml:{line} - {COMPONENT}" in result.stdout and reported in result.stdout


def test_check_defs_reports_an_ill_typed_edge(project: Path):
    edge = "training_jsonl: chat_split\n      preset"
    result = check_edited(project, edge, edge.replace("training_jsonl", "binidx"), "defs")
    assert result.returncode != 0
    assert "pipeline my_sft: stage sft: sft/automodel consumes no binidx" in result.stdout + result.stderr
