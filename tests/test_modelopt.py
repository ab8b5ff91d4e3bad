"""optimize/modelopt/quantize: real ModelOpt PTQ of the tiny Llama as a Megatron-Core model on CPU, calibrated on its
chat data, saved as a Megatron checkpoint that restores its quantizers, with ModelOpt's unified HF export beside it;
the format follows the profile's GPU; every named error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import DATA
from helpers import materialize, materialize_in_dagster
from safetensors import safe_open

from nemotron_assets.artifacts import validate
from nemotron_assets.catalog import CATALOG
from nemotron_assets.errors import NamedError
from nemotron_assets.hardware import architecture
from nemotron_assets.pipelines import PipelineSpec
from nemotron_assets.steps import InputArtifact, StepRun
from nemotron_assets.steps.modelopt import quantize as modelopt_quantize
from resources.artifact_store import ArtifactStore

QUANTIZE = "optimize/modelopt/quantize"
CHAT = DATA / "tiny_chat.jsonl"


def quantize_pipeline(model: Path, data: Path = CHAT, preset: str = "tiny", **config: Any) -> PipelineSpec:
    return PipelineSpec.parse(
        {
            "name": "t",
            "description": "quantize",
            "sources": [
                {"name": "model", "type": "checkpoint_hf", "path": str(model)},
                {"name": "data", "type": "training_jsonl", "path": str(data)},
            ],
            "stages": [
                {
                    "name": "out",
                    "step": QUANTIZE,
                    "consumes": {"checkpoint_hf": "model", "training_jsonl": "data"},
                    "preset": preset,
                    "config": config,
                }
            ],
        }
    )


def step_run(tmp_path: Path, model: Path, profile: str = "local_cpu", gpus: int = 0, **params: Any) -> StepRun:
    """A quantize StepRun (tiny preset) for the checks that come before any work."""
    step = CATALOG.step(QUANTIZE)
    inputs = {
        "checkpoint_hf": InputArtifact("model", "checkpoint_hf", model, "v1"),
        "training_jsonl": InputArtifact("data", "training_jsonl", CHAT, "v2"),
    }
    return StepRun(
        step, step.preset_values("tiny") | params, inputs, tmp_path / "out", tmp_path / "work", gpus, profile=profile
    )


@pytest.fixture(scope="module")
def quantized(fixtures_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    store = ArtifactStore(root=str(tmp_path_factory.mktemp("store")))
    return materialize(quantize_pipeline(fixtures_dir / "tiny-llama"), store)


def test_fp8_ptq_saves_a_megatron_checkpoint_that_restores_its_quantizers(quantized):
    stats = quantized.stats
    assert stats["recipe"] == "fp8" and stats["enabled_quantizers"] > 0
    assert stats["restored_quantizers"] == stats["enabled_quantizers"]
    assert stats["nll_restored"] == pytest.approx(stats["nll_after"], rel=1e-5)
    assert stats["holdout_samples"] == 8 and stats["calibration_samples"] == 8
    assert stats["nll_before"] > 0 and abs(stats["relative_nll_increase"]) < 0.02
    assert stats["nll_after"] != stats["nll_before"]  # fake-quant changed the forward
    contract = quantized.provenance["contract"]
    assert contract["iteration_dir"] == "iter_0000000" and contract["has_run_config"]
    assert (quantized.path / "iter_0000000" / "modelopt_state").is_dir()
    assert quantized.provenance["quantization"] == {
        "recipe": "fp8",
        "quant_algo": "FP8",
        "deploy_gpu": "H100",
        "calib_size": 8,
        "hf_export": "hf",
        "calibration_data": quantized.provenance["inputs"][1]["version"],
    }


def test_fp8_hf_export_is_deployable(quantized):
    out = quantized.path / "hf"
    assert json.loads((out / "hf_quant_config.json").read_text())["quantization"]["quant_algo"] == "FP8"
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "modelopt"
    dtypes = {}
    for shard in out.glob("*.safetensors"):
        with safe_open(shard, "pt") as f:
            dtypes |= {name: str(f.get_slice(name).get_dtype()) for name in f.keys()}  # noqa: SIM118
    assert dtypes["model.layers.0.mlp.up_proj.weight"] == "F8_E4M3"
    assert any(name.endswith("weight_scale") for name in dtypes)
    assert dtypes["model.embed_tokens.weight"] == "F32"  # excluded from quantization, as ModelOpt exports it
    assert validate(out, "checkpoint_hf")["has_chat_template"]


def test_format_follows_the_profiles_gpu(tmp_path: Path, fixtures_dir: Path, monkeypatch: pytest.MonkeyPatch):
    model = fixtures_dir / "tiny-llama"
    hopper = step_run(tmp_path, model, "slurm_4node", **{"deploy_gpu": None})
    assert modelopt_quantize.recipe_for(hopper) == ("fp8", "H100")
    blackwell = tmp_path / "profiles"
    blackwell.mkdir()
    text = (Path(__file__).parents[1] / "env_profiles" / "slurm_1node.toml").read_text()
    (blackwell / "b200.toml").write_text(text.replace('model = "H100"', 'model = "B200"'))
    monkeypatch.setenv("NEMOTRON_PROFILE_DIR", str(blackwell))
    assert modelopt_quantize.recipe_for(step_run(tmp_path, model, "b200", **{"deploy_gpu": None})) == ("nvfp4", "B200")
    gpus = ("NVIDIA H200 141GB", "gb200", "A100", "a100-40gb", "MI300X")
    assert [architecture(g) for g in gpus] == ["hopper", "blackwell", "ampere", "ampere", "other"]


@pytest.mark.parametrize(
    ("profile", "params", "message"),
    [
        ("slurm_4node", {"deploy_gpu": None, "args.export_quant_cfg": "nvfp4"}, "nvfp4 does not run on H100"),
        ("local_cpu", {"deploy_gpu": "A100", "args.export_quant_cfg": "fp8"}, "fp8 does not run on A100"),
        ("local_cpu", {"deploy_gpu": None}, "no GPU to pick the format for"),
        ("local_cpu", {"deploy_gpu": "B200"}, "nvfp4 calibration needs a CUDA GPU"),
        # the tiny Llama's widths (hidden 64, intermediate 172) do not divide into AWQ's 128-input blocks
        ("local_cpu", {"deploy_gpu": "A100", "args.export_quant_cfg": "int4_awq"}, "blocks of 128"),
    ],
)
def test_unsupported_quant_recipe(tmp_path: Path, fixtures_dir: Path, profile: str, params: dict, message: str):
    with pytest.raises(NamedError) as e:
        modelopt_quantize.run(step_run(tmp_path, fixtures_dir / "tiny-llama", profile, **params))
    assert e.value.name == "unsupported_quant_recipe" and message in e.value.detail
    assert "nvfp4 on Blackwell" in e.value.recovery
    assert not (tmp_path / "out").exists()


def test_nvfp4_config_is_validated_by_modelopt(tmp_path: Path, fixtures_dir: Path):
    with pytest.raises(NamedError, match=r"config is valid \(\d+ quantizer rules\)"):
        modelopt_quantize.run(step_run(tmp_path, fixtures_dir / "tiny-llama", **{"deploy_gpu": "B200"}))


def test_calibration_data_missing(tmp_path: Path, fixtures_dir: Path):
    run = step_run(tmp_path, fixtures_dir / "tiny-llama")
    del run.inputs["training_jsonl"]
    with pytest.raises(NamedError) as e:
        modelopt_quantize.run(run)
    assert e.value.name == "calibration_data_missing" and "Wire the training_jsonl" in e.value.recovery


def test_too_few_calibration_rows(tmp_path: Path, fixtures_dir: Path):
    with pytest.raises(NamedError) as e:
        modelopt_quantize.run(step_run(tmp_path, fixtures_dir / "tiny-llama", **{"args.calib_size": 100}))
    assert e.value.name == "not_enough_calibration_rows" and "holds only 48 rows" in e.value.detail
    assert "representative calibration set" in e.value.recovery


@pytest.mark.parametrize("params", [{"holdout_size": 0}, {"args.calib_size": 48}])
def test_no_rows_left_to_measure_on(tmp_path: Path, fixtures_dir: Path, params: dict):
    """The NLL is never measured on the calibration rows: with none held out the step refuses before any work."""
    with pytest.raises(NamedError) as e:
        modelopt_quantize.run(step_run(tmp_path, fixtures_dir / "tiny-llama", **params))
    assert e.value.name == "tiny_calibration_used_as_quality_signal" and "none left to measure on" in e.value.detail
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize(
    ("gpus", "tp", "message"),
    [(0, 2, "this run has 0 GPUs"), (8, 8, "num_key_value_heads 2")],  # the tiny Llama: 4 heads, 2 KV heads
)
def test_tensor_parallel_must_fit_the_gpus_and_heads(tmp_path: Path, fixtures_dir: Path, gpus: int, tp: int, message):
    run = step_run(tmp_path, fixtures_dir / "tiny-llama", gpus=gpus, **{"args.tp": tp})
    with pytest.raises(NamedError) as e:
        modelopt_quantize.run(run)
    assert e.value.name == "world_size_not_divisible" and message in e.value.detail
    assert "one per GPU" in e.value.recovery
    assert not (tmp_path / "work").exists()


def outlier_model(source: Path, target: Path) -> Path:
    """The tiny Llama with one large weight in every linear layer: per-tensor scales coarsen, INT8 loses quality."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and "lm_head" not in name:
                module.weight[0, 0] = 1000 * module.weight.abs().max()
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(source).save_pretrained(target)
    return target


def test_quality_drop_over_max_drop_publishes_nothing(fixtures_dir: Path, tmp_path: Path):
    model = outlier_model(fixtures_dir / "tiny-llama", tmp_path / "outlier")
    store = ArtifactStore(root=str(tmp_path / "store"))
    params = {"args.export_quant_cfg": "int8_sq", "max_drop": 0.0001, "hf_export": False}
    pipeline = quantize_pipeline(model, **params)
    with pytest.raises(NamedError) as e:
        materialize(pipeline, store)
    assert e.value.name == "quantization_quality_drop" and "over max_drop 0.01%" in e.value.detail
    assert "gentler recipe" in e.value.recovery
    assert not list((tmp_path / "store").rglob("*.distcp"))


def test_smoothquant_has_no_hf_export_from_megatron(tmp_path: Path, fixtures_dir: Path):
    run = step_run(tmp_path, fixtures_dir / "tiny-llama", **{"deploy_gpu": "A100", "args.export_quant_cfg": "int8_sq"})
    with pytest.raises(NamedError) as e:
        modelopt_quantize.run(run)
    assert e.value.name == "hf_export_unsupported" and "int8_sq scales activations" in e.value.detail
    assert "hf_export = false" in e.value.recovery
    assert not (tmp_path / "work").exists()


def test_hf_backend_refuses_to_score_the_quantized_export(quantized, tmp_path: Path):
    """transformers loads ModelOpt's FP8 weights without their scales; eval/model_eval must not score that."""
    from nemotron_assets.steps.evaluation import model_eval

    step = CATALOG.step("eval/model_eval")
    inputs = {"checkpoint_hf": InputArtifact("out", "checkpoint_hf", quantized.path / "hf", quantized.version)}
    run = StepRun(step, step.preset_values("default"), inputs, tmp_path / "out", tmp_path / "work")
    with pytest.raises(NamedError) as e:
        model_eval.local_model(run)
    assert e.value.name == "quantized_checkpoint_needs_endpoint" and "set endpoint_url" in e.value.recovery


def test_through_dagster_the_run_profile_picks_the_format(fixtures_dir: Path, tmp_path: Path):
    """The Launchpad's hardware profile reaches the step: an H100 profile quantizes to FP8 (the ModelOpt work runs
    as a Pipes subprocess), the CPU profile has no GPU to choose for."""
    stage = {"args.calib_size": 8, "holdout_size": 8, "calib_max_tokens": 128}
    default = quantize_pipeline(fixtures_dir / "tiny-llama", preset="default", **stage)  # deploy_gpu unset
    gpu = materialize_in_dagster(default, tmp_path / "gpu", profile="local_gpu")
    assert gpu.success
    metadata = gpu.asset_materializations_for_node("t__out")[0].metadata
    assert metadata["recipe"].value == "fp8" and metadata["profile"].value == "local_gpu"
    assert metadata["launcher"].value == "local"
    cpu = materialize_in_dagster(default, tmp_path / "cpu", profile="local_cpu")
    assert not cpu.success
    failure = next(e for e in cpu.all_events if e.is_step_failure).step_failure_data.error.message
    assert "unsupported_quant_recipe" in failure and "profile local_cpu has no GPU" in failure
