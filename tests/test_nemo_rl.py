"""rl/nemo_rl/dpo, rlvr, rlhf: NeMo-RL run configs in the schema of NeMo-RL's example YAMLs, the data checks before
launch, warm start from a validated SFT checkpoint_megatron, Ray sizing and the Slurm / Kubernetes launch specs."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest
from conftest import DATA
from helpers import job_spec
from omegaconf import OmegaConf
from test_megatron_contract import megatron_run

from nemotron_assets.catalog import CATALOG
from nemotron_assets.errors import NamedError
from nemotron_assets.guardrails import gpus_for
from nemotron_assets.job import JobSpec
from nemotron_assets.launchers.k8s import backend_image, pod_spec
from nemotron_assets.launchers.slurm import job_script, sbatch_command
from nemotron_assets.steps import InputArtifact, StepRun
from nemotron_assets.steps.nemo_rl import train as nemo_rl
from resources.profile import load_profile

# Keys of NeMo-RL's examples/configs/dpo.yaml and grpo_math_1B.yaml (and the data/env keys their comments and the
# NeMo-Gym configs document) that the generated configs set: a key outside these is not NeMo-RL's schema.
NEMO_RL_KEYS = {
    "defaults",
    *(f"dpo.{k}" for k in ("max_num_steps", "val_period", "reference_policy_kl_penalty")),
    *(f"dpo.{k}" for k in ("preference_loss_weight", "sft_loss_weight")),
    *(f"grpo.{k}" for k in ("num_prompts_per_step", "num_generations_per_prompt", "max_num_steps")),
    *(f"grpo.{k}" for k in ("normalize_rewards", "val_period")),
    "loss_fn.reference_policy_kl_penalty",
    *(f"policy.{k}" for k in ("model_name", "tokenizer.name", "train_global_batch_size", "train_micro_batch_size")),
    *(f"policy.{k}" for k in ("max_total_sequence_length", "logprob_batch_size", "optimizer.kwargs.lr")),
    *(f"policy.{k}" for k in ("dtensor_cfg.enabled", "megatron_cfg.enabled", "generation.max_new_tokens")),
    "policy.megatron_cfg.tensor_model_parallel_size",
    "policy.megatron_cfg.pipeline_model_parallel_size",
    *(f"checkpointing.{k}" for k in ("enabled", "checkpoint_dir")),
    "logger.log_dir",
    "cluster.gpus_per_node",
    "cluster.num_nodes",
    "data.train.data_path",
    "data.validation.data_path",
    *(f"data.default.{k}" for k in ("dataset_name", "prompt_key", "chosen_key", "rejected_key")),
    *(f"data.default.{k}" for k in ("input_key", "output_key", "env_name", "processor")),
    "env.should_use_nemo_gym",
    *(f"env.nemo_gym.genrm_model.{k}" for k in ("responses_api_models.vllm_model.model", "vllm")),
}


def leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and key != "vllm":
            out |= leaves(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def split_data(tmp_path: Path, source: Path, rows: list[dict] | None = None) -> Path:
    """train/val JSONL with a manifest.json, as data_prep/rl_prep publishes them."""
    records = rows if rows is not None else [json.loads(line) for line in source.read_text().splitlines()]
    directory = tmp_path / "data"
    directory.mkdir()
    half = len(records) * 3 // 4
    for name, part in (("train", records[:half]), ("val", records[half:])):
        (directory / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    (directory / "manifest.json").write_text(json.dumps({"train": "train.jsonl", "val": "val.jsonl"}))
    return directory


def step_run(tmp_path: Path, step: str, data: Path, profile: str = "slurm_1node", **params: Any) -> StepRun:
    spec = CATALOG.step(f"rl/nemo_rl/{step}")
    inputs = {"training_jsonl": InputArtifact("data", "training_jsonl", data, "v1")}
    if not (tmp_path / "sft").exists():  # every RL stage warm-starts from an SFT checkpoint
        megatron_run(tmp_path / "sft")
    inputs |= {"checkpoint_megatron": InputArtifact("sft", "checkpoint_megatron", tmp_path / "sft", "v4")}
    inputs |= params.pop("inputs", {})
    gpus = gpus_for(spec, load_profile(profile))
    values = spec.preset_values("tiny") | params
    return StepRun(spec, values, inputs, tmp_path / "out", tmp_path / "work", gpus, profile=profile)


def prepared(run: StepRun) -> tuple[dict[str, Any], str]:
    """The job's NeMo-RL config (as the job writes it, paths as the job sees them) and its script."""
    job, _ = nemo_rl.prepare(run)
    config = OmegaConf.to_container(OmegaConf.create(run.paths.args(job["config"])), resolve=True)
    return config, job["script"]


@pytest.fixture
def dpo_data(tmp_path: Path) -> Path:
    return split_data(tmp_path, DATA / "tiny_dpo.jsonl")


@pytest.fixture
def rlvr_data(tmp_path: Path) -> Path:
    return split_data(tmp_path, DATA / "tiny_rlvr.jsonl")


def test_dpo_config_in_nemo_rl_schema(tmp_path: Path, dpo_data: Path):
    config, script = prepared(step_run(tmp_path, "dpo", dpo_data))
    keys = leaves(config)
    assert set(keys) <= NEMO_RL_KEYS, sorted(set(keys) - NEMO_RL_KEYS)
    assert keys["defaults"] == "/opt/nemo-rl/examples/configs/dpo.yaml"
    assert keys["dpo.max_num_steps"] == 10 and keys["dpo.reference_policy_kl_penalty"] == 0.05
    assert keys["policy.train_global_batch_size"] == 16 and keys["policy.optimizer.kwargs.lr"] == 5e-7
    assert keys["policy.megatron_cfg.enabled"] is True and keys["policy.dtensor_cfg.enabled"] is False
    assert keys["data.train.data_path"] == str(dpo_data / "train.jsonl")
    assert keys["data.validation.data_path"] == str(dpo_data / "val.jsonl")
    assert keys["data.default.dataset_name"] == "BinaryPreferenceDataset"
    assert keys["cluster.num_nodes"] == 1 and keys["cluster.gpus_per_node"] == 8
    assert keys["checkpointing.checkpoint_dir"] == str(tmp_path / "work" / "checkpoints")
    assert script.splitlines()[-1] == 'exec python /opt/nemo-rl/examples/run_dpo.py --config "$CONFIG"'


def test_rlvr_config_uses_the_rows_fields(tmp_path: Path, rlvr_data: Path):
    config, script = prepared(step_run(tmp_path, "rlvr", rlvr_data))
    keys = leaves(config)
    assert set(keys) <= NEMO_RL_KEYS, sorted(set(keys) - NEMO_RL_KEYS)
    assert keys["defaults"].endswith("grpo_math_1B.yaml") and "run_grpo.py" in script
    assert (keys["data.default.input_key"], keys["data.default.output_key"]) == ("input", "output")
    train = Path(keys["data.train.data_path"])
    assert train == tmp_path / "work" / "data" / "train.jsonl"
    first = json.loads(train.read_text().splitlines()[0])
    source = json.loads((rlvr_data / "train.jsonl").read_text().splitlines()[0])
    assert first == {"input": source["messages"][-1]["content"], "output": source["answer"]}
    assert keys["grpo.num_prompts_per_step"] * keys["grpo.num_generations_per_prompt"] == 16
    assert keys["env.should_use_nemo_gym"] is False and keys["data.default.env_name"] == "math"


def test_rlhf_serves_the_reward_model(tmp_path: Path, fixtures_dir: Path):
    rows = [{"messages": [{"role": "user", "content": f"Say {i}."}], "agent_ref": {"name": "genrm"}} for i in range(8)]
    data = split_data(tmp_path, Path(), rows)
    reward = fixtures_dir / "tiny-llama"
    inputs = {"checkpoint_hf": InputArtifact("genrm", "checkpoint_hf", reward, "v3")}
    config, _ = prepared(step_run(tmp_path, "rlhf", data, inputs=inputs))
    keys = leaves(config)
    assert set(keys) <= NEMO_RL_KEYS, sorted(set(keys) - NEMO_RL_KEYS)
    assert keys["env.nemo_gym.genrm_model.responses_api_models.vllm_model.model"] == str(reward)
    assert keys["env.nemo_gym.genrm_model.vllm"]["gpu_memory_utilization"] == 0.35
    assert keys["env.should_use_nemo_gym"] is True and keys["data.default.dataset_name"] == "NemoGymDataset"


def test_warm_start_from_a_validated_sft_checkpoint(tmp_path: Path, dpo_data: Path):
    sft = megatron_run(tmp_path / "sft")
    inputs = {"checkpoint_megatron": InputArtifact("sft", "checkpoint_megatron", sft, "v4")}
    run = step_run(tmp_path, "dpo", dpo_data, inputs=inputs, **{"policy.model_name": "meta-llama/Llama-3.2-1B"})
    config, script = prepared(run)
    policy = str(tmp_path / "work" / "policy_hf")
    assert config["policy"]["model_name"] == policy and config["policy"]["tokenizer"]["name"] == policy
    export = shlex.split(script.splitlines()[2].split("then ", 1)[1].removesuffix("; fi"))
    assert export[:2] == ["python", "-c"] and "AutoBridge.from_hf_pretrained" in export[2]
    assert export[3:] == ["meta-llama/Llama-3.2-1B", str(sft / "iter_0000010"), policy]


def test_incomplete_sft_checkpoint_is_refused(tmp_path: Path, dpo_data: Path):
    sft = megatron_run(tmp_path / "sft")
    (sft / "iter_0000010" / "common.pt").unlink()
    inputs = {"checkpoint_megatron": InputArtifact("sft", "checkpoint_megatron", sft, "v4")}
    with pytest.raises(NamedError) as e:
        nemo_rl.prepare(step_run(tmp_path, "dpo", dpo_data, inputs=inputs))
    assert e.value.name == "incomplete_megatron_checkpoint"


def test_multi_node_slurm_job_starts_a_ray_cluster(tmp_path: Path, dpo_data: Path):
    profile = load_profile("slurm_4node")
    run = step_run(tmp_path, "dpo", dpo_data, "slurm_4node", **{"policy.train_global_batch_size": 64})
    config, script = prepared(run)
    assert config["cluster"] == {"num_nodes": 4, "gpus_per_node": 8}
    assert "ray start --head --port=6379 --num-gpus=8" in script
    assert "-ge 4 ]; do sleep 5; done" in script and "ray start --address=$HEAD:6379 --num-gpus=8 --block" in script
    command = ["bash", str(tmp_path / "work" / "job.sh")]
    assert job_script(command, profile.nodes).splitlines()[-1] == f"srun --kill-on-bad-exit=1 {shlex.join(command)}"
    submit = sbatch_command(profile, run.gpus, "dpo", tmp_path / "job.sh", tmp_path / "job.log", [])
    assert "--nodes=4" in submit and "--gpus-per-node=8" in submit and "--exclusive" in submit


def test_kubernetes_pod_runs_in_the_nemo_rl_image(tmp_path: Path, dpo_data: Path):
    profile = load_profile("k8s")
    spec = CATALOG.step("rl/nemo_rl/dpo")
    assert backend_image(profile, spec.kind) == "nvcr.io/nvidia/nemo-rl:v0.6.0"
    limits = pod_spec(profile, gpus_for(spec, profile))["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "8"
    config, script = prepared(step_run(tmp_path, "dpo", dpo_data, "k8s"))
    assert config["cluster"] == {"num_nodes": 1, "gpus_per_node": 8} and "ray start" not in script


def expect(run: StepRun, error: str, detail: str) -> None:
    with pytest.raises(NamedError) as e:
        nemo_rl.prepare(run)
    assert e.value.name == error and detail in e.value.detail
    assert e.value.recovery == CATALOG.step(run.step.id).recovery(error)
    assert not (run.work_dir / "nemo_rl.yaml").exists()


def test_inverted_preference_pairs(tmp_path: Path):
    rows = [json.loads(line) for line in (DATA / "tiny_dpo.jsonl").read_text().splitlines()]
    rows[2]["chosen_score"], rows[2]["rejected_score"] = 1.0, 9.0
    expect(step_run(tmp_path, "dpo", split_data(tmp_path, Path(), rows)), "inverted_preference_pairs", "inverted")


def test_batch_shape_not_divisible(tmp_path: Path, dpo_data: Path):
    run = step_run(tmp_path, "dpo", dpo_data, **{"policy.train_global_batch_size": 12})
    expect(run, "batch_shape_not_divisible", "12 pairs over micro 1 x data-parallel 8")


def test_train_used_as_validation(tmp_path: Path):
    expect(step_run(tmp_path, "dpo", DATA / "tiny_dpo.jsonl"), "train_used_as_validation_unintentionally", "no val")
    run = step_run(tmp_path, "dpo", DATA / "tiny_dpo.jsonl", **{"data.allow_train_as_validation": True})
    assert leaves(prepared(run)[0])["data.validation.data_path"] == str(DATA / "tiny_dpo.jsonl")


def test_missing_verifier_fields(tmp_path: Path):
    rows = [json.loads(line) for line in (DATA / "tiny_rlvr.jsonl").read_text().splitlines()]
    del rows[5]["answer"]
    run = step_run(tmp_path, "rlvr", split_data(tmp_path, Path(), rows))
    expect(run, "missing_verifier_fields", "train.jsonl:6")


def test_rollout_batch_not_divisible(tmp_path: Path, rlvr_data: Path):
    run = step_run(tmp_path, "rlvr", rlvr_data, **{"policy.train_global_batch_size": 6})
    expect(run, "rollout_batch_not_divisible", "16 rollouts per step, train_global_batch_size 6")


def test_mixed_nemo_gym_and_upstream_config(tmp_path: Path, rlvr_data: Path):
    expect(
        step_run(tmp_path, "rlvr", rlvr_data, **{"env.should_use_nemo_gym": True}),
        "mixed_nemo_gym_and_upstream_config",
        "0 of 48",
    )


def test_responses_api_schema_missing_unless_a_default_agent_serves_the_rows(tmp_path: Path, fixtures_dir: Path):
    rows = [{"messages": [{"role": "user", "content": "Hi."}]} for _ in range(8)]
    inputs = {"checkpoint_hf": InputArtifact("genrm", "checkpoint_hf", fixtures_dir / "tiny-llama", "v3")}
    run = step_run(tmp_path, "rlhf", split_data(tmp_path, Path(), rows), inputs=inputs)
    expect(run, "responses_api_schema_missing", "no agent_ref")
    agent = {"type": "responses_api_agents", "name": "genrm_simple_agent"}
    data = run.input("training_jsonl").path
    run = step_run(tmp_path, "rlhf", data, inputs=inputs, **{"data.default_agent_ref": agent})
    config, _ = prepared(run)  # the agent serves every row that names none: NeMo-RL reads it from data
    assert config["data"]["default_agent_ref"] == agent


def test_reward_model_policy_confused(tmp_path: Path, fixtures_dir: Path):
    rows = [{"prompt": f"Say {i}.", "agent_ref": {"name": "genrm"}} for i in range(8)]
    model = fixtures_dir / "tiny-llama"
    inputs = {"checkpoint_hf": InputArtifact("genrm", "checkpoint_hf", model, "v3")}
    run = step_run(
        tmp_path, "rlhf", split_data(tmp_path, Path(), rows), inputs=inputs, **{"policy.model_name": str(model)}
    )
    expect(run, "reward_model_policy_confused", "is the policy's checkpoint")


def test_rlhf_invalid_batch_shape(tmp_path: Path):
    rows = [{"prompt": f"Say {i}.", "agent_ref": {"name": "genrm"}} for i in range(8)]
    inputs = {"checkpoint_hf": InputArtifact("genrm", "checkpoint_hf", tmp_path, "v3")}
    run = step_run(
        tmp_path, "rlhf", split_data(tmp_path, Path(), rows), inputs=inputs, **{"policy.train_global_batch_size": 3}
    )
    expect(run, "invalid_batch_shape", "8 rollouts per step")


def test_last_step_is_published_and_validated(tmp_path: Path, dpo_data: Path):
    """Through the stage runner: the launcher stands in for the nemo-rl container job (no GPU here) and leaves
    NeMo-RL's checkpoint layout; the last step's Megatron weights become the artifact, checked by the contract."""
    from nemotron_assets.execution import run_stage
    from nemotron_assets.pipelines import PipelineSpec
    from resources.artifact_store import ArtifactStore

    launched: list[JobSpec] = []

    def container_job(command: list[str], env: dict[str, str]) -> None:
        launched.append(job_spec(command))
        checkpoints = Path(launched[-1].work_dir) / "checkpoints"
        for step in (5, 10):
            megatron_run(checkpoints / f"step_{step}" / "policy" / "weights", iterations=(step,), latest=step)
        (checkpoints / "step_10" / "training_info.json").write_text(json.dumps({"step": 10}))

    pipeline = PipelineSpec.parse(
        {
            "name": "t",
            "description": "dpo",
            "sources": [
                {"name": "prefs", "type": "training_jsonl", "path": str(dpo_data)},
                {"name": "sft", "type": "checkpoint_megatron", "path": str(megatron_run(tmp_path / "sft"))},
            ],
            "stages": [
                {
                    "name": "out",
                    "step": "rl/nemo_rl/dpo",
                    "consumes": {"training_jsonl": "prefs", "checkpoint_megatron": "sft"},
                    "preset": "tiny",
                }
            ],
        }
    )
    store = ArtifactStore(root=str(tmp_path / "store"))
    stage = pipeline.stage("out")
    result = run_stage(pipeline, stage, pipeline.params(stage), store, "slurm_1node", launcher=container_job, gpus=8)
    assert launched[0].backend == "nemo_rl" and result.provenance["contract"]["iteration"] == 10
    assert result.stats["checkpoint"] == "step_10" and result.stats["step"] == 10 and result.stats["rows"] == 36
    assert (result.path / "iter_0000010" / "common.pt").exists()
