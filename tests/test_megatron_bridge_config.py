"""The launch spec as Megatron-Bridge's own ConfigContainer (its recipes, validated by the library), and the packed
attention used where Transformer Engine is absent."""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from nemotron_assets.steps.megatron_bridge import no_te

NANO3 = "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16"


@pytest.fixture(scope="module")
def bridge():
    return no_te.import_bridge()


@pytest.fixture(autouse=True)
def sixteen_gpus(monkeypatch):
    """The world size Megatron-Bridge validates against (torchrun's WORLD_SIZE): 16 GPUs, data parallel 8."""
    monkeypatch.setenv("WORLD_SIZE", "16")


def spec(tmp_path: Path, mode: str, model: str, **changes: Any) -> dict[str, Any]:
    bins = tmp_path / "training_2048.npy"
    np.save(bins, np.array([{"input_ids": [1, 2, 3], "loss_mask": [1, 1, 0], "seq_start_id": [0]}]), allow_pickle=True)
    return {
        "mode": mode,
        "hf_model_path": model,
        "load_hf_weights": True,
        "seq_length": 2048,
        "train": {"train_iters": 10, "global_batch_size": 16, "micro_batch_size": 1},
        "parallel": {
            "tensor_model_parallel_size": 2,
            "pipeline_model_parallel_size": 1,
            "context_parallel_size": 1,
            "expert_model_parallel_size": 8,
        },
        "recompute_granularity": "full",
        "checkpoint": {"save": str(tmp_path / "checkpoints"), "save_interval": 5, "pretrained_checkpoint": None},
        "lr": None,
        "peft": None,
        "dataset": {
            "kind": "packed",
            "path": str(bins),
            "metadata": str(tmp_path / "m.jsonl"),
            "packed_sequence_size": 2048,
        },
    } | changes


def test_sft_of_an_hf_llama_uses_the_common_recipe_with_its_autobridge_provider(bridge, fixtures_dir: Path, tmp_path):
    from megatron.bridge.models.gpt_provider import GPTModelProvider
    from megatron.bridge.training.config import ConfigContainer

    from nemotron_assets.steps.megatron_bridge.config import training_config

    config = training_config(spec(tmp_path, "sft", str(fixtures_dir / "tiny-llama")))
    config.validate()  # Megatron-Bridge's own checks (parallel sizes, scheduler, dataset, checkpoint)
    assert isinstance(config, ConfigContainer) and isinstance(config.model, GPTModelProvider)
    assert (config.model.hidden_size, config.model.num_layers, config.model.seq_length) == (64, 2, 2048)
    assert config.model.tensor_model_parallel_size == 2 and config.model.recompute_granularity == "full"
    assert config.dataset.packed_sequence_specs.packed_sequence_size == 2048
    assert str(config.dataset.packed_sequence_specs.packed_train_data_path).endswith("training_2048.npy")
    assert config.checkpoint.save == config.checkpoint.load and config.peft is None
    assert config.train.global_batch_size == 16 and config.train.eval_iters == 0 and config.data_parallel_size == 8


def test_profiled_steps_named_by_the_job_environment_reach_bridges_profiler(
    bridge, fixtures_dir, tmp_path, monkeypatch
):
    from nemotron_assets.steps.megatron_bridge.config import PROFILE_STEPS, training_config

    unprofiled = training_config(spec(tmp_path, "sft", str(fixtures_dir / "tiny-llama")))
    assert not (unprofiled.profiling and unprofiled.profiling.use_pytorch_profiler)
    monkeypatch.setenv(PROFILE_STEPS, "10:12")
    config = training_config(spec(tmp_path, "sft", str(fixtures_dir / "tiny-llama")))
    config.validate()
    profiling = config.profiling
    assert (profiling.use_pytorch_profiler, profiling.profile_step_start, profiling.profile_step_end) == (True, 10, 12)


@pytest.mark.parametrize(
    "tracker",
    [
        {"kind": "mlflow", "tracking_uri": "http://127.0.0.1:5000", "experiment": "e"},
        {"kind": "wandb", "project": "p", "entity": "team", "mode": "offline"},
    ],
)
def test_a_named_tracker_is_set_on_bridges_own_logger_config(bridge, fixtures_dir: Path, tmp_path, tracker):
    """Megatron-Bridge logs through its LoggerConfig (wandb_* / mlflow_* fields, which its GlobalState reads): the
    ConfigContainer the step builds carries them (checked here, not by a CPU training run)."""
    from pydantic import TypeAdapter

    from nemotron_assets.steps.megatron_bridge.config import training_config
    from nemotron_assets.tracking import TrackedRun, Tracker

    tracked = TrackedRun(TypeAdapter(Tracker).validate_python(tracker), "p/sft", {"k": "v"}, "v1", tmp_path)
    fields = {k: str(v) if isinstance(v, Path) else v for k, v in tracked.bridge().items()}  # as the job reads them
    config = training_config(spec(tmp_path, "sft", str(fixtures_dir / "tiny-llama"), tracking=fields))
    config.validate()  # includes LoggerConfig.finalize: the MLflow fields complete, mlflow importable
    assert {k: getattr(config.logger, k) for k in fields} == fields
    named = config.logger.mlflow_experiment or config.logger.wandb_project
    assert named == tracker.get("experiment", tracker.get("project"))
    assert (config.logger.mlflow_run_name or config.logger.wandb_exp_name) == "p/sft"


@pytest.mark.parametrize(("scheme", "adapter"), [("lora", "LoRA"), ("dora", "DoRA")])
def test_nano3_lora_uses_megatron_bridges_nemotron_3_nano_recipe(bridge, tmp_path, scheme: str, adapter: str):
    from nemotron_assets.steps.megatron_bridge.config import training_config

    lora = {"type": scheme, "dim": 16, "alpha": 32, "dropout": 0.0, "target_modules": ["linear_qkv", "linear_proj"]}
    base = str(tmp_path / "base")
    changes = {"checkpoint": {"save": str(tmp_path / "ck"), "save_interval": 5, "pretrained_checkpoint": base}}
    config = training_config(spec(tmp_path, "peft", NANO3, peft=lora, load_hf_weights=False) | changes)
    config.validate()
    assert type(config.model).__name__ == "Nemotron3NanoProvider" and config.model.num_moe_experts
    assert config.model.expert_model_parallel_size == 8 and config.model.tensor_model_parallel_size == 2
    assert type(config.peft).__name__ == adapter and (config.peft.dim, config.peft.alpha) == (16, 32)  # peft.type
    assert config.checkpoint.pretrained_checkpoint == base


def test_pretraining_reads_the_blend_of_pretrain_prep(bridge, tmp_path):
    from nemotron_assets.steps.megatron_bridge.config import training_config

    blend = {"kind": "blend", "splits": {"train": [[0.7, "/data/a"], [0.3, "/data/b"]]}}
    changes = {"checkpoint": {"save": str(tmp_path / "ck"), "save_interval": 5, "pretrained_checkpoint": "/base"}}
    config = training_config(spec(tmp_path, "pretrain", NANO3, dataset=blend, lr=1e-4, load_hf_weights=False) | changes)
    config.validate()
    assert config.dataset.blend_per_split[0] == (["/data/a", "/data/b"], [0.7, 0.3])
    assert config.optimizer.lr == 1e-4 and config.dataset.seq_length == 2048


def packed_attention(query, key, value, starts: list[int]):
    from megatron.core.packed_seq_params import PackedSeqParams

    cu = torch.tensor(starts, dtype=torch.int32)
    params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=8, max_seqlen_kv=8)
    attention = SimpleNamespace(config=SimpleNamespace(attention_dropout=0.0), training=False, softmax_scale=0.5)
    return no_te.packed_attention_class().forward(attention, query, key, value, None, packed_seq_params=params)


def test_packed_attention_is_causal_attention_within_each_sequence(bridge):
    torch.manual_seed(0)
    query, key, value = torch.randn(10, 4, 8), torch.randn(10, 2, 8), torch.randn(10, 2, 8)  # THD, 2 KV groups
    out = packed_attention(query, key, value, [0, 3, 10])
    for start, end in ((0, 3), (3, 10)):
        q = query[start:end].transpose(0, 1)
        k, v = (x[start:end].transpose(0, 1).repeat_interleave(2, dim=0) for x in (key, value))
        expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.5)
        assert torch.allclose(out[start:end], expected.transpose(0, 1).reshape(end - start, -1), atol=1e-5)


@pytest.mark.parametrize("masked", [False, True])
def test_unpacked_attention_through_sdpa_matches_megatron_cores_local_attention(bridge, monkeypatch, masked: bool):
    from megatron.core import parallel_state, tensor_parallel
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.transformer_config import TransformerConfig
    from megatron.core.utils import GlobalMemoryBuffer

    monkeypatch.setattr(parallel_state, "_GLOBAL_MEMORY_BUFFER", GlobalMemoryBuffer())
    monkeypatch.setattr(torch.cuda, "current_device", lambda: "cpu")  # where the local class's buffer is allocated
    no_dropout_rng = SimpleNamespace(fork=contextlib.nullcontext)
    monkeypatch.setattr(tensor_parallel, "get_cuda_rng_tracker", lambda: no_dropout_rng)
    config = TransformerConfig(
        num_layers=1, hidden_size=32, num_attention_heads=4, num_query_groups=2, attention_dropout=0.0
    )
    one_rank = SimpleNamespace(tp=SimpleNamespace(size=lambda: 1))
    local, fused = (
        cls(config, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self", pg_collection=one_rank)
        for cls in (DotProductAttention, no_te.packed_attention_class())
    )
    torch.manual_seed(0)
    query, key, value = torch.randn(6, 2, 4, 8), torch.randn(6, 2, 2, 8), torch.randn(6, 2, 2, 8)  # [s, b, h, d]
    mask = torch.ones(6, 6, dtype=torch.bool).tril().logical_not().expand(2, 1, 6, 6).clone()  # True = masked
    if masked:
        mask[1, :, 4:, :2] = True  # the second sequence's last tokens do not see its first two
    expected = local(query, key, value, mask)  # (its own causal mask, built without a mask, is made on "cuda")
    assert expected.shape == (6, 2, 32)
    assert torch.allclose(fused(query, key, value, mask if masked else None), expected, atol=1e-5)


@pytest.mark.parametrize("freq_rows", [16, 11], ids=["max_positions", "one_row_per_token"])
def test_packed_rope_gathered_on_the_device_is_megatron_cores_own(bridge, freq_rows: int):
    from megatron.core.models.common.embeddings import rope_utils

    no_te.use_sync_free_thd_rope()
    assert rope_utils._apply_rotary_pos_emb_thd is no_te.thd_rope
    one_rank = SimpleNamespace(size=lambda: 1, rank=lambda: 0)
    torch.manual_seed(0)
    t = torch.randn(11, 4, 8, requires_grad=True)  # THD: sequences of 3, 6 and 2 tokens
    cu = torch.tensor([0, 3, 9, 11], dtype=torch.int32)
    freqs = torch.randn(freq_rows, 1, 1, 8)
    ours = no_te.thd_rope(t, cu, freqs, cp_group=one_rank)
    library = no_te.thd_rope.library(t, cu, freqs, cp_group=one_rank)
    assert torch.allclose(ours, library)
    (grad_ours,) = torch.autograd.grad(ours.square().sum(), t)
    (grad_library,) = torch.autograd.grad(library.square().sum(), t)
    assert torch.allclose(grad_ours, grad_library)
    if freq_rows > 11:  # each sequence from position 0: the second starts as the first does
        assert torch.allclose(ours[3], rope_utils._apply_rotary_pos_emb_bshd(t[3:4, None], freqs[:1])[0, 0])
