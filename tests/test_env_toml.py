"""env/env_toml: nemo-run env profiles written from our hardware profiles load back equal, hold no secrets."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from nemotron_assets.catalog import CATALOG
from nemotron_assets.errors import NamedError
from nemotron_assets.steps import StepRun
from nemotron_assets.steps.env.env_toml import ROLES, read_profile, run
from resources.profile import load_profile

STEP = CATALOG.step("env/env_toml")
PRESETS = {"lepton": "lepton", "slurm": "slurm_1node", "dgxcloud": "dgxcloud"}


def step_run(tmp_path: Path, preset: str, **overrides: Any) -> StepRun:
    params = {p.name: p.default for p in STEP.parameters} | STEP.presets[preset] | overrides
    return StepRun(step=STEP, params=params, inputs={}, output_dir=tmp_path / "out")


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_written_file_loads_back_into_an_equal_profile(tmp_path: Path, preset: str):
    result = run(step_run(tmp_path, preset))
    document = tomllib.loads((tmp_path / "out" / STEP.presets[preset]["output_path"]).read_text())
    assert read_profile(document) == load_profile(PRESETS[preset])
    assert set(STEP.presets[preset]["checks.required_profiles"]) <= set(document)
    assert result.stats["profiles"] == len(ROLES) + 1 and "wandb" in document
    sft = document[f"{preset}_sft_automodel"]
    assert sft["extends"] == f"{preset}_base" and sft["container_image"].endswith("nemo-automodel:26.04")
    assert document[f"{preset}_prep_sft_packing"]["extends"] == f"{preset}_prep_base"
    assert document[f"{preset}_curate"]["gpus_per_node"] == 0  # CPU roles never ask for GPUs
    assert result.stats["warnings"] == [f"{preset}_rl_nemo_rl_rlhf has 1 node(s); 4 recommended"]


def test_slurm_4node_profile_round_trips(tmp_path: Path):
    run(step_run(tmp_path, "slurm", profile="slurm_4node"))
    document = tomllib.loads((tmp_path / "out" / "env.slurm.toml").read_text())
    assert read_profile(document) == load_profile("slurm_4node")


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_secret_values_never_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, preset: str):
    profile = load_profile(PRESETS[preset])
    secret = "s3cr3t-value-planted-by-the-test"
    dgx = profile.dgxcloud
    names = [*profile.env_vars, *([dgx.app_id_env, dgx.app_secret_env] if dgx else [])]
    for name in names:
        monkeypatch.setenv(name, secret)
    result = run(step_run(tmp_path, preset))
    written = [p.read_text() for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert written and all(secret not in text for text in written)
    assert all(f"${{oc.env:{name}}}" in written[0] for name in names)
    assert secret not in json.dumps([result.stats, result.provenance])


def test_missing_parent_profile(tmp_path: Path):
    with pytest.raises(NamedError, match="missing_parent_profile") as e:
        run(step_run(tmp_path, "lepton", sections={"lepton_custom": {"extends": "lepton_nowhere"}}))
    assert "add the parent section" in str(e.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "table",
    [
        {"extends": "lepton_base", "HF_TOKEN": "${oc.env:HF_TOKEN}"},  # flattened out of env_vars
        {"extends": "lepton_base", "env_vars": ["HF_TOKEN"]},  # not a table: the loader cannot deep-merge it
        {"extends": "lepton_base", "env_vars": {"HF_TOKEN": "hf_literal"}},  # a literal over the reference
    ],
)
def test_env_vars_clobbered(tmp_path: Path, table: dict):
    with pytest.raises(NamedError, match="env_vars_clobbered") as e:
        run(step_run(tmp_path, "lepton", sections={"lepton_custom": table}))
    assert "deep-merge" in str(e.value)


def test_missing_required_profile(tmp_path: Path):
    required = [*STEP.presets["lepton"]["checks.required_profiles"], "lepton_extra"]
    with pytest.raises(NamedError, match="missing_required_profile"):
        run(step_run(tmp_path, "lepton", **{"checks.required_profiles": required}))


def test_extra_sections_merge_over_generated_ones(tmp_path: Path):
    sections = {"lepton_sft_automodel": {"nodes": 4, "env_vars": {"SFT_OUTPUT_DIR": "/mnt/out/sft"}}}
    result = run(step_run(tmp_path, "lepton", sections=sections))
    document = tomllib.loads((tmp_path / "out" / "env.lepton.toml").read_text())
    assert document["lepton_sft_automodel"]["nodes"] == 4
    assert document["lepton_sft_automodel"]["extends"] == "lepton_base"
    assert result.stats["profiles"] == len(ROLES) + 1


def test_k8s_profile_is_refused(tmp_path: Path):
    with pytest.raises(NamedError, match="unsupported_profile: k8s runs on k8s") as e:
        run(step_run(tmp_path, "lepton", profile="k8s"))
    assert "Dagster launches them directly" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_lepton_mounts_outside_the_lepton_table_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    profile = load_profile("lepton")
    misplaced = profile.model_copy(update={"mounts": ["/data:/data"]})
    monkeypatch.setattr("nemotron_assets.steps.env.env_toml.load_profile", lambda name: misplaced)
    with pytest.raises(NamedError, match="unsupported_profile: lepton: lepton mounts go in"):
        run(step_run(tmp_path, "lepton"))


def test_output_path_outside_the_artifact_is_refused(tmp_path: Path):
    for output_path in (str(tmp_path / "env.lepton.toml"), "../env.lepton.toml"):
        with pytest.raises(NamedError, match="output_path_outside_artifact") as e:
            run(step_run(tmp_path, "lepton", output_path=output_path))
        assert "relative path" in str(e.value)
    assert not (tmp_path / "env.lepton.toml").exists()


def test_env_toml_contract(tmp_path: Path):
    from nemotron_assets.artifacts import validate

    run(step_run(tmp_path, "slurm"))
    assert validate(tmp_path / "out", "env_toml")["profiles"] == len(ROLES) + 1
    (tmp_path / "bad.toml").write_text('[slurm_sft]\nextends = "slurm_base"\n')
    with pytest.raises(NamedError, match="invalid_env_toml: .*\\['slurm_sft'\\] extend a profile"):
        validate(tmp_path / "bad.toml", "env_toml")
    (tmp_path / "bad.toml").write_text("[slurm_base\n")
    with pytest.raises(NamedError, match="invalid_env_toml"):
        validate(tmp_path / "bad.toml", "env_toml")
