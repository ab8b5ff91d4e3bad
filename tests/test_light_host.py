"""A light Dagster host: `pip install nemotron-assets` without extras loads the code location and plans a pipeline,
with no torch, Megatron, Curator or lm-eval installed (jobs bring those in their images)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from nemotron_assets.paths import PROJECT_ROOT

ABSENT = ("torch", "transformers", "megatron", "nemo_automodel", "nemo_curator", "lm_eval", "modelopt", "peft")
PROBE = f"""
import importlib.util, sys
from nemotron_assets.definitions import defs
assert not [m for m in {ABSENT!r} if importlib.util.find_spec(m)], "an extra is installed"
print(len(list(defs.resolve_all_asset_keys())))
"""


def test_definitions_load_and_a_plan_is_made_without_the_extras(tmp_path: Path):
    venv = tmp_path / "host"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "-c", str(PROJECT_ROOT / "constraints.txt"), str(PROJECT_ROOT)], check=True, cwd=tmp_path)
    subprocess.run([*pip, "--no-deps", "-r", str(PROJECT_ROOT / "post-install.txt")], check=True, cwd=tmp_path)
    loaded = subprocess.run([venv / "bin" / "python", "-c", PROBE], capture_output=True, text=True, cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    from nemotron_assets.definitions import defs

    assert int(loaded.stdout.split()[-1]) == len(list(defs.resolve_all_asset_keys()))  # every shipped asset
    plan = ["plan", "--goal", "checkpoint_hf", "--have", "training_jsonl", "--gpu", "h100", "--gpus-per-node", "8"]
    light = subprocess.run([venv / "bin" / "nemotron-assets", *plan], capture_output=True, text=True, cwd=tmp_path)
    assert light.returncode == 0, light.stderr[-2000:]
    full = subprocess.run([Path(sys.executable).parent / "nemotron-assets", *plan], capture_output=True, text=True)
    assert "sft/megatron_bridge" in light.stdout and light.stdout == full.stdout  # the same plan as with the extras
