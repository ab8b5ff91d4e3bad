"""NeMo-RL run configurations for rl/nemo_rl/dpo (examples/run_dpo.py) and rl/nemo_rl/rlvr, rlhf
(examples/run_grpo.py), in the keys of NeMo-RL's own example YAMLs (dpo.yaml, grpo_math_1B.yaml): the step's
parameters, the data splits, the policy to start from, the Megatron training backend, Ray's cluster size.

Each config inherits the container's example config (`defaults:`, resolved by NeMo-RL's loader) and overrides what
the step decides, so every key NeMo-RL has but the step does not set keeps NeMo-RL's default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nemotron_assets.catalog.models import StepParams

NEMO_RL = "/opt/nemo-rl"
ENTRIES = {  # step -> (entry script, example config it inherits), paths in the nemo-rl container
    "rl/nemo_rl/dpo": ("examples/run_dpo.py", "examples/configs/dpo.yaml"),
    "rl/nemo_rl/rlvr": ("examples/run_grpo.py", "examples/configs/grpo_math_1B.yaml"),
    "rl/nemo_rl/rlhf": ("examples/run_grpo.py", "examples/configs/grpo_math_1B.yaml"),
}
CONFIG_GROUPS = ("dpo", "grpo", "loss_fn", "policy", "env")  # the parameter groups that are NeMo-RL config sections


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep merge; `extra` wins."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def step_keys(params: StepParams) -> dict[str, Any]:
    """The step's parameters in NeMo-RL's config sections, as set (unset ones keep NeMo-RL's defaults); the policy's
    model is the step's own (the HF export of its input)."""
    return params.model_dump(include=set(CONFIG_GROUPS), exclude={"policy": {"model_name"}}, exclude_none=True)


def data_section(
    step_id: str, train: Path, validation: Path, fields: dict[str, str], agent: dict[str, str] | None = None
) -> dict[str, Any]:
    """data.train / data.validation / data.default for local JSONL files: preference pairs for DPO, prompts with
    their verifier field for the math environment, NeMo-Gym rows for RLHF (with data.default_agent_ref, the agent
    of rows that name none)."""
    if step_id == "rl/nemo_rl/dpo":
        default = {"dataset_name": "BinaryPreferenceDataset", "prompt_key": "prompt"}
        default |= {"chosen_key": "chosen", "rejected_key": "rejected"}
    elif step_id == "rl/nemo_rl/rlhf":
        default = {"dataset_name": "NemoGymDataset", "env_name": "nemo_gym", "processor": "nemo_gym_data_processor"}
    else:
        default = {"dataset_name": "ResponseDataset", "input_key": fields["prompt"], "output_key": fields["answer"]}
        default |= {"env_name": "math", "processor": "math_hf_data_processor"}
    section = {"train": {"data_path": train}, "validation": {"data_path": validation}, "default": default}
    return section | ({"default_agent_ref": agent} if agent else {})


def run_config(
    step_id: str,
    params: StepParams,
    policy: Path | str,
    data: dict[str, Any],
    cluster: dict[str, int],
    output: dict[str, Path],
) -> dict[str, Any]:
    """The complete override config: inherits the example YAML; Megatron backend (the policy's checkpoints are
    Megatron distributed checkpoints, like the SFT checkpoint it starts from)."""
    config = {
        "defaults": f"{NEMO_RL}/{ENTRIES[step_id][1]}",
        "policy": {
            "model_name": policy,
            "tokenizer": {"name": policy},
            "dtensor_cfg": {"enabled": False},
            "megatron_cfg": {"enabled": True},
        },
        "checkpointing": {"enabled": True, "checkpoint_dir": output["checkpoints"]},
        "logger": {"log_dir": output["logs"]},
        "data": data,
        "cluster": cluster,
    }
    return merge(config, step_keys(params))
