"""Megatron-Bridge's ConfigContainer for a launch spec (megatron_bridge.launch_spec): the library's own recipe,
overridden with the step's parameters.

Nemotron 3 Nano / Lightning use Megatron-Bridge's Nemotron 3 Nano recipes (SFT, PEFT, pretraining); any other HF
model the common recipe of the mode with the model provider AutoBridge makes from its HF config. Where
Transformer Engine is absent the model is built from Megatron-Core's local layers (no_te.local_provider).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

NANO3_RECIPES = {
    "sft": "nemotron_3_nano_sft_config",
    "peft": "nemotron_3_nano_peft_config",
    "pretrain": "nemotron_3_nano_pretrain_config",
}
NANO3_MODELS = ("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16", "nvidia/NVIDIA-Nemotron-3.5-Lightning-30B-A3B-BF16")
COMMON_RECIPES = {"sft": "_sft_common", "peft": "_peft_common", "pretrain": "_pretrain_common"}
PROFILE_STEPS = "NEMOTRON_PROFILE_STEPS"  # "START:END": PyTorch's profiler over those global steps, on rank 0


def recipe(spec: dict[str, Any]):
    """The library's recipe for the model and mode, with the model provider set."""
    from megatron.bridge import AutoBridge

    from nemotron_assets.steps.megatron_bridge.no_te import import_recipe

    mode, model = spec["mode"], spec["hf_model_path"]
    if model in NANO3_MODELS:
        cfg = getattr(import_recipe("nemotronh.nemotron_3_nano"), NANO3_RECIPES[mode])()
        load = spec["load_hf_weights"] and not spec["checkpoint"]["pretrained_checkpoint"]
        if load:  # the HF weights seed training: the provider loads them, as upstream's runner does
            cfg.model = AutoBridge.from_hf_pretrained(model, trust_remote_code=True).to_megatron_provider(True)
        return cfg
    cfg = getattr(import_recipe("common"), COMMON_RECIPES[mode])()
    load = spec["load_hf_weights"] and not spec["checkpoint"]["pretrained_checkpoint"]
    cfg.model = AutoBridge.from_hf_pretrained(model).to_megatron_provider(load_weights=load)
    return cfg


def training_config(spec: dict[str, Any]):
    """A ConfigContainer for `spec`; call `.validate()` on it (finetune/pretrain do)."""
    from megatron.bridge.training.config import FinetuningDatasetConfig, GPTDatasetConfig

    from nemotron_assets.steps.megatron_bridge import no_te

    cfg = recipe(spec)
    model, seq = cfg.model, spec["seq_length"]
    if not no_te.has_transformer_engine():
        no_te.local_provider(model)
    model.seq_length = seq
    for name, value in spec["parallel"].items():
        if name != "expert_model_parallel_size" or getattr(model, "num_moe_experts", None):
            setattr(model, name, value)
    model.sequence_parallel = model.sequence_parallel and model.tensor_model_parallel_size > 1
    if spec["recompute_granularity"]:
        model.recompute_granularity = spec["recompute_granularity"]
        model.recompute_method, model.recompute_num_layers = "uniform", 1
    for name, value in spec["train"].items():
        setattr(cfg.train, name, value)
    cfg.train.eval_interval, cfg.train.eval_iters = spec["train"]["train_iters"] + 1, 0
    cfg.scheduler.lr_warmup_iters = min(cfg.scheduler.lr_warmup_iters, max(spec["train"]["train_iters"] // 10, 1))
    if spec.get("lr"):
        cfg.optimizer.lr = spec["lr"]
        cfg.optimizer.min_lr = spec["lr"] / 10
    save = spec["checkpoint"]["save"]
    cfg.checkpoint.save = cfg.checkpoint.load = save
    cfg.checkpoint.save_interval = spec["checkpoint"]["save_interval"]
    cfg.checkpoint.pretrained_checkpoint = spec["checkpoint"]["pretrained_checkpoint"]
    cfg.checkpoint.async_save = False
    cfg.logger.tensorboard_dir = str(Path(save).parent / "tensorboard")
    cfg.logger.log_interval = 1
    for name, value in spec.get("tracking", {}).items():  # the named tracker, through Bridge's own loggers
        setattr(cfg.logger, name, value)
    cfg.tokenizer.tokenizer_type, cfg.tokenizer.tokenizer_model = "HuggingFaceTokenizer", spec["hf_model_path"]
    data = spec["dataset"]
    if data["kind"] == "packed":
        cfg.dataset = FinetuningDatasetConfig(
            dataset_root=str(Path(data["path"]).parent),
            seq_length=seq,
            packed_sequence_specs=_packed_specs(data),
            dataloader_type="batch",
            do_validation=False,
            do_test=False,
        )
    else:
        train = data["splits"]["train"]
        cfg.dataset = GPTDatasetConfig(
            random_seed=cfg.rng.seed,
            seq_length=seq,
            blend_per_split=[([p for _, p in train], [w for w, _ in train]), None, None],
            reset_attention_mask=False,
            reset_position_ids=False,
            create_attention_mask=False,  # plain causal: the kernels mask by type, no [s, s] tensor per sample
            eod_mask_loss=False,
            path_to_cache=str(Path(save).parent / "index_cache"),
            dataloader_type="single",
        )
    cfg.peft = _adapter(spec["peft"])
    if steps := os.environ.get(PROFILE_STEPS):
        cfg.profiling = _profiling(steps)
    return cfg


def _profiling(steps: str):
    """Megatron-Bridge's own PyTorch-profiler settings for global steps START:END; the trace goes to the run's
    tensorboard directory."""
    from megatron.bridge.training.config import ProfilingConfig

    start, end = (int(step) for step in steps.split(":"))
    return ProfilingConfig(use_pytorch_profiler=True, profile_step_start=start, profile_step_end=end, profile_ranks=[0])


def _packed_specs(data: dict[str, Any]):
    from megatron.bridge.data.datasets.packed_sequence import PackedSequenceSpecs

    return PackedSequenceSpecs(
        packed_sequence_size=data["packed_sequence_size"],
        packed_train_data_path=data["path"],
        packed_metadata_path=data["metadata"],
    )


ADAPTERS = {"lora": ("megatron.bridge.peft.lora", "LoRA"), "dora": ("megatron.bridge.peft.dora", "DoRA")}


def _adapter(peft: dict[str, Any] | None):
    """Megatron-Bridge's own PEFT scheme named by peft.type, with the step's rank, alpha, dropout and modules."""
    if peft is None:
        return None
    module, name = ADAPTERS[peft["type"]]
    scheme = getattr(importlib.import_module(module), name)
    return scheme(
        target_modules=list(peft["target_modules"]), dim=peft["dim"], alpha=peft["alpha"], dropout=peft["dropout"]
    )
