"""Guardrails before launch: a profile without the GPUs a step needs fails with insufficient_hardware before anything
is submitted; CPU-heavy steps never take GPUs; GPU steps share a pool per profile."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import DATA
from helpers import materialize_in_dagster

from nemotron_assets.catalog import CATALOG
from nemotron_assets.errors import NamedError
from nemotron_assets.guardrails import check_hardware, gpu_pool, gpus_for, minimum_gpus
from nemotron_assets.pipelines import PipelineSpec
from resources.profile import load_profile

SUPER3 = "nvidia/NVIDIA-Nemotron-3-Super-120B-A12B-BF16"


def test_the_model_raises_the_minimum():
    sft = CATALOG.step("sft/megatron_bridge")
    assert minimum_gpus(sft, {"hf_model_path": SUPER3}) == 32
    assert minimum_gpus(sft, {"hf_model_path": "my/unknown-model"}) == sft.min_gpus == 1
    check_hardware(sft, {"hf_model_path": SUPER3}, load_profile("slurm_4node"))  # 32 GPUs: enough
    with pytest.raises(
        NamedError, match="insufficient_hardware: .* with .*Super.* needs 32 GPUs; profile slurm_1node has 8"
    ) as error:
        check_hardware(sft, {"hf_model_path": SUPER3}, load_profile("slurm_1node"))
    assert error.value.recovery == sft.recovery("insufficient_hardware")  # the step's own recovery text


def test_steps_without_their_own_error_get_the_platform_recovery():
    dpo = CATALOG.step("rl/nemo_rl/dpo")
    with pytest.raises(NamedError, match="insufficient_hardware: rl/nemo_rl/dpo needs 1 GPUs; profile local_cpu") as e:
        check_hardware(dpo, {}, load_profile("local_cpu"))
    assert e.value.recovery == CATALOG.contract_errors["insufficient_hardware"]
    check_hardware(CATALOG.step("peft/automodel"), {}, load_profile("local_cpu"))  # tiny LoRA runs on CPU


@pytest.mark.parametrize(
    ("step", "gpus"),
    [("data_prep/sft_packing", 0), ("curate/nemo_curator", 0), ("sdg/data_designer", 0), ("peft/automodel", 8)],
)
def test_cpu_heavy_steps_never_take_gpus(step: str, gpus: int):
    assert gpus_for(CATALOG.step(step), load_profile("local_gpu")) == gpus


def test_gpu_steps_share_the_profile_pool(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("NEMOTRON_PROFILE", "slurm_4node")
    assert gpu_pool(CATALOG.step("sft/automodel")) == "hw_slurm_4node"
    assert gpu_pool(CATALOG.step("data_prep/pretrain_prep")) is None


def test_an_unmet_minimum_fails_before_anything_is_launched(tmp_path: Path):
    pipeline = PipelineSpec.parse(
        {
            "name": "g",
            "description": "DPO on a CPU profile",
            "sources": [
                {"name": "prefs", "type": "training_jsonl", "path": str(DATA / "tiny_dpo.jsonl")},
                {"name": "policy", "type": "checkpoint_megatron", "path": str(tmp_path / "no-such-checkpoint")},
            ],
            "stages": [
                {
                    "name": "dpo",
                    "step": "rl/nemo_rl/dpo",
                    "consumes": {"training_jsonl": "prefs", "checkpoint_megatron": "policy"},
                }
            ],
        }
    )
    result = materialize_in_dagster(pipeline, tmp_path / "store")
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert failure.step_failure_data.user_failure_data.metadata["error"].value == "insufficient_hardware"
    assert not (tmp_path / "store" / "g" / "dpo").exists()  # nothing staged, nothing published
