"""The code location: loads lazily, validates with Dagster, exposes Launchpad config, matches its snapshot."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from nemotron_assets.catalog import CATALOG
from nemotron_assets.factory import config_class, flat_params

SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_graph.json"
HEAVY = ("torch", "transformers", "pyarrow", "megatron", "tokenizers", "datasets")


def test_dagster_validates_the_code_location():
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-m", "nemotron_assets.definitions"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "Validation successful" in result.stderr + result.stdout


def test_definitions_import_no_heavy_library():
    code = "import sys, nemotron_assets.definitions; print(sorted({m.split('.')[0] for m in sys.modules}))"
    loaded = json.loads(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.replace(
            "'", '"'
        )
    )
    assert not set(HEAVY) & set(loaded)


@pytest.mark.parametrize("step_id", sorted(CATALOG.steps))
def test_every_step_has_a_launchpad_config(step_id: str):
    step = CATALOG.step(step_id)
    preset = next(iter(step.presets))
    defaults = step.preset_values(preset)
    config_type = config_class(f"c_{step_id.replace('/', '_')}", step, defaults)

    @dg.asset(name=f"a_{step_id.replace('/', '_')}")
    def asset(config: config_type) -> None: ...  # Dagster resolves the config schema here

    assert asset.op.config_schema is not None
    assert flat_params(step, config_type()) == defaults


def test_launchpad_defaults_are_the_stage_params():
    from nemotron_assets.definitions import defs

    asset = defs.get_assets_def(dg.AssetKey(["tiny", "packed_parquet"]))
    fields = asset.op.config_schema.config_type.fields
    assert fields["pack_size"].default_value == 256
    assert fields["algorithm"].default_value == "first_fit_decreasing"
    assert fields["tokenizer"].default_value == "${NEMOTRON_BASE_MODEL}"


def config_defaults(config_type) -> dict:
    return {
        name: config_defaults(field.config_type)
        if field.config_type.kind.name == "STRICT_SHAPE"
        else field.default_value
        for name, field in config_type.fields.items()
    }


def graph_snapshot() -> dict:
    from nemotron_assets.definitions import defs

    assets = {}
    for spec in sorted(defs.resolve_all_asset_specs(), key=lambda s: s.key.to_user_string()):
        assets_def = (
            defs.get_assets_def(spec.key) if spec.key in defs.resolve_asset_graph().materializable_asset_keys else None
        )
        assets[spec.key.to_user_string()] = {
            "config": config_defaults(assets_def.op.config_schema.config_type) if assets_def else None,
            "deps": sorted(d.asset_key.to_user_string() for d in spec.deps),
            "group": spec.group_name,
            "kinds": sorted(spec.kinds),
            "code_version": "derived" if spec.code_version else None,  # tests/test_store_and_versions.py
            "tags": dict(spec.tags),
            "metadata": {k: v for k, v in spec.metadata.items() if isinstance(v, str)},
            "description": spec.description,
        }
    checks = sorted(
        f"{s.asset_key.to_user_string()}:{s.name}:{'blocking' if s.blocking else 'warn'}"
        for c in defs.asset_checks
        for s in c.check_specs
    )
    return {"assets": assets, "checks": checks}


def test_graph_snapshot():
    """Every asset spec and check; regenerate with UPDATE_SNAPSHOTS=1 after an intended change."""
    current = graph_snapshot()
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
    assert current == json.loads(SNAPSHOT.read_text())
