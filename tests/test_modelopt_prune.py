"""optimize/modelopt/prune: the checks before any GPU is asked for, and the job the step launches (our own Minitron
job over torchrun, one process per pipeline stage) through the Slurm and Kubernetes profiles. Minitron prunes
Megatron-Core models on GPUs with Megatron-Core >= 0.17; that run is bench/verify_prune_gpu.py's, not a test's."""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path
from typing import Any

import pytest
from conftest import DATA
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
CHAT = DATA / "tiny_chat.jsonl"  # 48 chat rows


def step_run(tmp_path: Path, model: Path, gpus: int = 1, **params: Any) -> StepRun:
    step = CATALOG.step(PRUNE)
    inputs = {
        "checkpoint_hf": InputArtifact("model", "checkpoint_hf", model, "v1"),
        "training_jsonl": InputArtifact("data", "training_jsonl", CHAT, "v2"),
    }
    return StepRun(step, step.preset_values("tiny") | params, inputs, tmp_path / "out", tmp_path / "work", gpus)


@pytest.fixture
def model(fixtures_dir: Path) -> Path:
    return fixtures_dir / "tiny-llama"


def launched_job(run: StepRun) -> JobSpec:
    """The job spec the step hands its launcher (the launch itself is stopped there)."""
    launched: list[JobSpec] = []

    def record(command: list[str], env: dict[str, str]) -> None:
        launched.append(job_spec(command))
        raise RuntimeError("recorded")

    with pytest.raises(RuntimeError, match="recorded"):
        modelopt_prune.run(dataclasses.replace(run, launcher=record))
    (job,) = launched
    return job


def test_tiny_job(tmp_path: Path, model: Path):
    run = step_run(tmp_path, model)
    assert modelopt_prune.check(run) == {"layers": 2, "parameters": validate_checkpoint_hf(model)["parameters"]}
    job = launched_job(run)
    assert job.backend == "modelopt" and job.torchrun and job.nproc_per_node == 1
    args = job.args
    assert args["task"] == "prune" and args["model"] == str(model) and args["output"] == str(tmp_path / "out")
    assert args["export_config"] == {"ffn_hidden_size": 128} and args["target_params"] is None
    assert len(args["calibration"]) == 8 and len(args["holdout"]) == 8  # the tiny preset's rows, in file order
    assert args["calibration"][0].startswith("<|im_start|>") and args["max_tokens"] == 256  # chat template applied
    assert args["pp"] == 1 and args["top_k"] == 10 and args["hparams_to_skip"] == []


def test_target_search_job(tmp_path: Path, model: Path):
    params = {
        "args.prune_export_config": None,
        "args.prune_target_params": 1e5,
        "args.hparams_to_skip": ["num_layers"],
        "args.top_k": 3,
        "holdout_size": 100,  # more than the data holds: the rest of the rows
    }
    args = launched_job(step_run(tmp_path, model, **params)).args
    assert args["target_params"] == 1e5 and args["export_config"] is None
    assert args["hparams_to_skip"] == ["num_layers"] and args["top_k"] == 3 and len(args["holdout"]) == 40


def test_pipeline_stages_are_processes(tmp_path: Path, model: Path):
    stages = {"args.num_layers_in_first_pipeline_stage": 1, "args.num_layers_in_last_pipeline_stage": 1}
    params = {"args.pp_size": 2} | stages
    job = launched_job(step_run(tmp_path, model, 2, **params))
    assert job.torchrun and job.nproc_per_node == 2 and job.args["pp"] == 2
    assert job.args["num_layers_in_first_pipeline_stage"] == 1 and job.args["num_layers_in_last_pipeline_stage"] == 1


@pytest.mark.parametrize(
    ("params", "gpus", "error", "detail"),
    [
        ({"args.prune_target_params": 1e5}, 1, "target_and_export_config_both_set", "both are set"),
        ({"args.prune_export_config": None}, 1, "prune_target_missing", "neither is set"),
        (
            {"args.prune_export_config": None, "args.prune_target_params": 2e5},
            1,
            "target_not_below_model_size",
            "2e+05",
        ),
        ({"args.prune_export_config": {"num_heads": 2}}, 1, "invalid_prune_config", "['num_heads'] are not Minitron"),
        ({"args.hparams_to_skip": ["depth"]}, 1, "invalid_prune_config", "['depth'] are not Minitron"),
        ({"args.prune_export_config": {"ffn_hidden_size": 200}}, 1, "invalid_prune_config", "to the model's 172"),
        ({"args.prune_export_config": {"num_layers": 0}}, 1, "invalid_prune_config", "num_layers = 0"),
        ({"args.prune_export_config": {"hidden_size": 32.5}}, 1, "invalid_prune_config", "hidden_size = 32.5"),
        ({"args.prune_export_config": {"num_attention_heads": 3}}, 1, "invalid_prune_config", "the 2 KV groups"),
        ({"args.pp_size": 3}, 4, "invalid_parallel_divisibility", "2 layers do not split over pp_size 3"),
        ({"args.pp_size": 2}, 1, "insufficient_hardware", "pp_size 2 needs 2 GPUs"),
        ({"args.calib_num_samples": 48}, 1, "not_enough_calibration_rows", "holds 48 rows"),
    ],
)
def test_named_errors(tmp_path: Path, model: Path, params: dict, gpus: int, error: str, detail: str):
    with pytest.raises(NamedError) as e:
        modelopt_prune.run(step_run(tmp_path, model, gpus, **params))
    assert e.value.name == error and detail in e.value.detail
    assert e.value.recovery == CATALOG.step(PRUNE).recovery(error)
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


def test_calibration_data_missing(tmp_path: Path, model: Path):
    run = step_run(tmp_path, model)
    del run.inputs["training_jsonl"]
    with pytest.raises(NamedError) as e:
        modelopt_prune.run(run)
    assert e.value.name == "calibration_data_missing" and "Wire a training_jsonl" in e.value.recovery
    assert not (tmp_path / "work").exists()


def test_uneven_stages_allow_any_layer_count(tmp_path: Path, model: Path):
    run = step_run(tmp_path, model, 3, **{"args.pp_size": 3, "args.num_layers_in_first_pipeline_stage": 0})
    assert modelopt_prune.check(run)["layers"] == 2


def test_cpu_profile_is_refused_before_launch():
    step = CATALOG.step(PRUNE)
    with pytest.raises(NamedError) as e:
        check_hardware(step, step.preset_values("tiny"), load_profile("local_cpu"))
    assert e.value.name == "insufficient_hardware" and "one process per pipeline stage" in e.value.recovery


def test_job_imports_without_the_new_stack():
    """The job backend and the local-layer support import on any Megatron-Core: everything Minitron needs is
    imported inside the job function."""
    from nemotron_assets.steps.modelopt import job, local_layers

    assert callable(job.prune) and local_layers.LOCAL_FIXED == ("num_attention_heads",)
    assert job.search_divisors(_config(64, 172, 2)) == {
        "hidden_size_divisor": 4,
        "ffn_hidden_size_divisor": 8,
        "num_layers_divisor": 1,
    }
    assert job.search_divisors(_config(4096, 14336, 32)) == {
        "hidden_size_divisor": 256,
        "ffn_hidden_size_divisor": 512,
        "num_layers_divisor": 2,
    }


def _config(hidden: int, ffn: int, layers: int):
    from types import SimpleNamespace

    return SimpleNamespace(hidden_size=hidden, ffn_hidden_size=ffn, num_layers=layers)


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
    (job,) = launched  # our prune job under torchrun over args.pp_size processes, started by the job itself
    assert job.backend == "modelopt" and job.args["task"] == "prune" and job.torchrun and job.nproc_per_node == 1
    submit = sbatch_command(slurm, gpus, "prune", tmp_path / "job.sh", tmp_path / "job.log", [])
    assert f"--gpus-per-node={gpus}" in submit and gpus == slurm.gpus_per_node
    k8s = load_profile("k8s")
    assert backend_image(k8s, step.kind) == k8s.images.megatron_bridge  # Megatron-Bridge's image
