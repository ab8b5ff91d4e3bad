"""Hardware profiles: every shipped profile validates; a bad one is refused with the reason."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from resources.profile import PROFILE_DIR, Profile, available_profiles, load_profile

SHIPPED = {"local_cpu", "local_gpu", "slurm_1node", "slurm_4node", "k8s", "lepton", "dgxcloud"}


def test_shipped_profiles_validate():
    assert set(available_profiles()) >= SHIPPED
    profiles = {name: load_profile(name) for name in SHIPPED}
    assert {p.executor for p in profiles.values()} == {"local", "slurm", "k8s", "lepton", "dgxcloud"}
    assert profiles["slurm_4node"].gpus == 32 and profiles["slurm_4node"].slurm.partition == "batch"
    assert profiles["k8s"].k8s.pod_wait_timeout_s >= 7 * 24 * 3600
    assert profiles["local_cpu"].gpus == 0 and profiles["local_cpu"].gpu is None


def valid(**changes) -> dict:
    with (PROFILE_DIR / "slurm_1node.toml").open("rb") as f:
        return {"name": "x"} | tomllib.load(f) | changes


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"env_vars": ["HF_TOKEN=hf_abc123"]}, "not an environment variable name"),
        ({"slurm": None}, "executor 'slurm' needs a \\[slurm\\] section"),
        ({"k8s": {"namespace": "n"}}, "\\[k8s\\] section in a profile whose executor is 'slurm'"),
        ({"gpu": None}, "gpus_per_node > 0 needs a \\[gpu\\] section"),
        ({"executor": "docker"}, "executor"),
        ({"gpus": 8}, "Extra inputs are not permitted"),
        ({"slurm": {"partition": "batch", "time": "four hours"}}, "time"),
    ],
)
def test_bad_profiles_are_refused(changes: dict, reason: str):
    with pytest.raises(ValidationError, match=reason):
        Profile(**valid(**changes))


def test_unknown_profile_names_the_available_ones(tmp_path: Path):
    (tmp_path / "mine.toml").write_text(
        'description = "d"\nexecutor = "local"\nnodes = 1\ngpus_per_node = 0\ncpus = 1\nmemory_gb = 1\n'
    )
    assert load_profile("mine", tmp_path).cpus == 1
    with pytest.raises(ValueError, match="unknown hardware profile 'other'; available: \\['mine'\\]"):
        load_profile("other", tmp_path)
