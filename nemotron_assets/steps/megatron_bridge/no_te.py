"""Megatron-Bridge 0.3.1 where Transformer Engine is absent: CPU machines, and GPU images without TE.

`megatron.bridge` imports `transformer_engine` at module level (LoRA layers, checkpointing) although the GPT
models it builds on CPU use Megatron-Core's local layer spec. `import_bridge()` first imports the Megatron-Core
and ModelOpt modules that probe for TE (so they record "no TE"), then imports Megatron-Bridge behind a temporary
stand-in finder for `transformer_engine.*`, and removes the stand-in again. `init_distributed()` joins torchrun's
process group (or starts a one-process one); without CUDA it uses gloo and makes the few CUDA calls on the
conversion path (RoPE device, RNG state, synchronize) CPU-safe. `cpu_provider()` selects Megatron-Core's local
(non-TE, unfused) layers, with an attention that takes packed sequences. Where TE exists, none of this is used.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

TE_PROBING_MODULES = (
    "megatron.core.models.gpt.gpt_model",
    "megatron.core.transformer.transformer_block",
    "megatron.core.extensions.transformer_engine",
    "megatron.core.dist_checkpointing",
    "megatron.core.optimizer",
    "modelopt.torch.opt.plugins",
    "modelopt.torch.quantization",
)


class _Absent(types.ModuleType):
    """A stand-in `transformer_engine` module: lower-case names are sub-modules, others are inert classes."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _Absent(f"{self.__name__}.{name}") if name[:1].islower() else type(name, (), {})
        setattr(self, name, value)
        return value


class _AbsentFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "transformer_engine" or fullname.startswith("transformer_engine."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _Absent(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module) -> None:
        return None


def has_transformer_engine() -> bool:
    return importlib.util.find_spec("transformer_engine") is not None


def import_bridge() -> types.ModuleType:
    """`megatron.bridge`, imported with a temporary TE stand-in when TE is not installed."""
    if "megatron.bridge" in sys.modules or has_transformer_engine():
        return importlib.import_module("megatron.bridge")
    for module in TE_PROBING_MODULES:
        importlib.import_module(module)
    finder = _AbsentFinder()
    sys.meta_path.insert(0, finder)
    try:
        bridge = importlib.import_module("megatron.bridge")
        importlib.import_module("megatron.bridge.training.checkpointing")
        importlib.import_module("megatron.bridge.peft.lora")
    finally:
        sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if n == "transformer_engine" or n.startswith("transformer_engine.")]:
            del sys.modules[name]
    return bridge


def init_distributed(tp: int = 1, pp: int = 1) -> None:
    """The process group (torchrun's, or a one-process one), model parallel tp x pp, and on CPU: gloo and
    CPU-safe CUDA calls on the conversion path."""
    import os

    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state, tensor_parallel

    cuda = torch.cuda.is_available()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    parallel_state.initialize_model_parallel(tp, pp)
    if cuda:
        tensor_parallel.model_parallel_cuda_manual_seed(0)
        return
    torch.cuda.current_device = lambda: "cpu"  # RoPE moves inv_freq to the "current device"
    torch.cuda.get_rng_state = torch.get_rng_state  # the checkpoint saver records RNG state
    torch.cuda.synchronize = lambda *args, **kwargs: None
    tensor_parallel.random.initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CPU_PROVIDER_SETTINGS = {
    "apply_rope_fusion": False,
    "gradient_accumulation_fusion": False,
    "bias_activation_fusion": False,
    "bias_dropout_fusion": False,
    "masked_softmax_fusion": False,
    "persist_layer_norm": False,
    "cross_entropy_loss_fusion": False,
    "moe_permute_fusion": False,
    "moe_router_fusion": False,
    "moe_grouped_gemm": False,
    "moe_token_dispatcher_type": "alltoall",
    "moe_flex_dispatcher_backend": None,
}


def cpu_provider(provider):
    """A model provider set to build Megatron-Core's local (non-TE, unfused) layers, with packed-sequence
    attention (PackedDotProductAttention) for GPT models."""
    from megatron.bridge.models.gpt_provider import GPTModelProvider

    if isinstance(provider, GPTModelProvider):
        provider.transformer_layer_spec = local_packed_layer_spec
    for name, value in CPU_PROVIDER_SETTINGS.items():
        if hasattr(provider, name):
            setattr(provider, name, value)
    return provider


def local_packed_layer_spec(config):
    """Megatron-Core's local GPT layer, its core attention able to take packed sequences."""
    from megatron.bridge.models.gpt_provider import local_layer_spec

    spec = local_layer_spec(config)
    spec.submodules.self_attention.submodules.core_attention = packed_attention_class()
    return spec


def packed_attention_class():
    """Megatron-Core's DotProductAttention, plus packed sequences (THD with cu_seqlens, as Megatron-Bridge's packed
    SFT batches are): causal attention within each sub-sequence through torch's scaled_dot_product_attention.
    Transformer Engine's fused attention does this where TE is installed; the local class refuses packed input."""
    import torch
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    class PackedDotProductAttention(DotProductAttention):
        def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                    packed_seq_params=None):  # fmt: skip
            if packed_seq_params is None:
                return super().forward(query, key, value, attention_mask, attn_mask_type, attention_bias)
            tokens = query.shape[0]  # THD: [t, heads, head_dim]
            starts = packed_seq_params.cu_seqlens_q[1:-1].to(query.device)
            segment = torch.searchsorted(starts, torch.arange(tokens, device=query.device), right=True)
            allowed = (segment[:, None] == segment[None, :]) & torch.ones(
                tokens, tokens, dtype=torch.bool, device=query.device
            ).tril()
            groups = query.shape[1] // key.shape[1]
            q, k, v = (x.transpose(0, 1).unsqueeze(0) for x in (query, key, value))
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            dropout = self.config.attention_dropout if self.training else 0.0
            out = torch.nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=allowed, dropout_p=dropout, scale=self.softmax_scale
            )
            return out.squeeze(0).transpose(0, 1).reshape(tokens, -1)

    return PackedDotProductAttention


def import_recipe(name: str) -> types.ModuleType:
    """`megatron.bridge.recipes.<name>` without running the recipes package's __init__, which imports every recipe,
    the vision-language ones with Megatron-Energon (not a dependency of these steps)."""
    package = "megatron.bridge.recipes"
    if package not in sys.modules and importlib.util.find_spec("megatron.energon") is None:
        spec = importlib.util.find_spec(package)
        shell = types.ModuleType(package)
        shell.__path__ = list(spec.submodule_search_locations)
        shell.__spec__ = spec
        sys.modules[package] = shell
    return importlib.import_module(f"{package}.{name}")
