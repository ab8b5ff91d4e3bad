"""optimize/modelopt/prune: the checks before any GPU is asked for, and the prune_minitron.py launch through the
Slurm and Kubernetes profiles (Minitron prunes Megatron-Core models on GPUs only)."""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path
from typing import Any

import pytest
from helpers import job_spec

from nemotron_assets.artifacts.checkpoints import validate_checkpoint_hf
from nemotron_assets.catalog import CATALOG
from nemotron_assets.errors import NamedError
from nemotron_assets.guardrails import check_hardware, gpus_for
from nemotron_assets.job import JobSpec
from nemotron_assets.launchers import backend_image, job_paths
from nemotron_assets.launchers.slurm import job_script, sbatch_command
from nemotron_assets.steps import InputArtifact, StepRun
from nemotron_assets.steps.modelopt import prune as modelopt_prune
from resources.profile import load_profile

PRUNE = "optimize/modelopt/prune"


def step_run(tmp_path: Path, model: Path, gpus: int = 2, **params: Any) -> StepRun:
    step = CATALOG.step(PRUNE)
    inputs = {"checkpoint_hf": InputArtifact("model", "checkpoint_hf", model, "v1")}
    return StepRun(step, step.preset_values("tiny") | params, inputs, tmp_path / "out", tmp_path / "work", gpus)


@pytest.fixture
def model(fixtures_dir: Path) -> Path:
    return fixtures_dir / "tiny-llama"


def test_tiny_command(tmp_path: Path, model: Path):
    run = step_run(tmp_path, model)
    assert modelopt_prune.check(run) == {"layers": 2, "parameters": validate_checkpoint_hf(model)["parameters"]}
    assert modelopt_prune.prune_arguments(run) == [
        f"--hf_model_name_or_path={model}",
        f"--output_hf_path={tmp_path / 'out'}",
        "--pp_size=2",
        "--calib_num_samples=8",
        "--seq_length=256",
        '--prune_export_config={"ffn_hidden_size": 128}',
    ]


def test_target_search_command(tmp_path: Path, model: Path):
    params = {"args.prune_export_config": None, "args.prune_target_params": 1e5, "args.hparams_to_skip": ["num_layers"]}
    command = modelopt_prune.prune_arguments(step_run(tmp_path, model, **params))
    assert "--prune_target_params=100000.0" in command and command[-2:] == ["--hparams_to_skip", "num_layers"]
    assert not any(flag.startswith("--prune_export_config") for flag in command)


@pytest.mark.parametrize(
    ("params", "gpus", "error", "detail"),
    [
        ({"args.prune_target_params": 1e5}, 2, "target_and_export_config_both_set", "both are set"),
        ({"args.prune_export_config": None}, 2, "prune_target_missing", "neither is set"),
        (
            {"args.prune_export_config": None, "args.prune_target_params": 2e5},
            2,
            "target_not_below_model_size",
            "2e+05",
        ),
        ({"args.pp_size": 3}, 4, "invalid_parallel_divisibility", "2 layers do not split over pp_size 3"),
        ({}, 1, "insufficient_hardware", "pp_size 2 needs 2 GPUs"),
    ],
)
def test_named_errors(tmp_path: Path, model: Path, params: dict, gpus: int, error: str, detail: str):
    with pytest.raises(NamedError) as e:
        modelopt_prune.run(step_run(tmp_path, model, gpus, **params))
    assert e.value.name == error and detail in e.value.detail
    assert e.value.recovery == CATALOG.step(PRUNE).recovery(error)
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


def test_uneven_stages_allow_any_layer_count(tmp_path: Path, model: Path):
    run = step_run(tmp_path, model, 3, **{"args.pp_size": 3, "args.num_layers_in_first_pipeline_stage": 0})
    assert modelopt_prune.check(run)["layers"] == 2


def test_cpu_profile_is_refused_before_launch():
    step = CATALOG.step(PRUNE)
    with pytest.raises(NamedError) as e:
        check_hardware(step, step.preset_values("tiny"), load_profile("local_cpu"))
    assert e.value.name == "insufficient_hardware" and "one process per pipeline stage" in e.value.recovery


def test_launch_through_slurm_and_kubernetes(tmp_path: Path, model: Path):
    step = CATALOG.step(PRUNE)
    slurm = load_profile("slurm_1node")
    gpus = gpus_for(step, slurm)
    launched: list[JobSpec] = []

    def record(command: list[str], env: dict[str, str]) -> None:
        launched.append(job_spec(command))
        script = job_script(command, slurm.nodes, slurm.images.megatron_bridge, job_paths(slurm))
        assert shlex.split(script.splitlines()[-1])[-4:] == command  # the same command, in the pyxis container
        raise RuntimeError("recorded")

    with pytest.raises(RuntimeError, match="recorded"):
        modelopt_prune.run(dataclasses.replace(step_run(tmp_path, model, gpus), launcher=record))
    (job,) = launched  # ModelOpt's script under torchrun over args.pp_size processes, started by the job itself
    assert job.backend == "modelopt" and job.args["task"] == "prune" and job.torchrun and job.nproc_per_node == 2
    submit = sbatch_command(slurm, gpus, "prune", tmp_path / "job.sh", tmp_path / "job.log", [])
    assert f"--gpus-per-node={gpus}" in submit and gpus == slurm.gpus_per_node
    k8s = load_profile("k8s")
    assert backend_image(k8s, step.kind) == k8s.images.megatron_bridge  # ModelOpt's examples ship in that image
