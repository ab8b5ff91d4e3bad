"""Megatron-Bridge where Transformer Engine is absent: CPU machines, and GPU images without TE.

`megatron.bridge` imports `transformer_engine` at module level (LoRA layers, checkpointing), and from 0.4 on
`megatron.energon` (vision-language data), although the GPT models built here use neither. `import_bridge()` first
imports the Megatron-Core and ModelOpt modules that probe for TE (so they record "no TE"), then imports
Megatron-Bridge behind a temporary stand-in finder for the absent packages, and removes the stand-ins again.
`init_distributed()` joins torchrun's process group (or starts a one-process one); without CUDA it uses gloo and
makes the few CUDA calls on the conversion path (RoPE device, RNG state, synchronize) CPU-safe. `local_provider()`
selects Megatron-Core's local (non-TE) layers with Megatron-Core's own fusions, an attention that takes packed
sequences (PyTorch's varlen flash kernel on GPUs), and RoPE over packed sequences without host syncs.
Where TE exists, none of this is used. `modelopt_megatron_export()` gives ModelOpt's Megatron -> HF export on a
Megatron-Core older than ModelOpt expects; `import_minitron()` gives ModelOpt's Minitron pruning mode without TE.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import sys
import types

OPTIONAL_PACKAGES = ("transformer_engine", "megatron.energon")
TE_PROBING_MODULES = (
    "megatron.core.models.gpt.gpt_model",
    "megatron.core.transformer.transformer_block",
    "megatron.core.extensions.transformer_engine",
    "megatron.core.dist_checkpointing",
    "megatron.core.optimizer",
    "modelopt.torch.opt.plugins",
    "modelopt.torch.quantization",
    "megatron.core.models.hybrid.hybrid_layer_specs",  # megatron-core >= 0.17
)


class _Absent(types.ModuleType):
    """A stand-in `transformer_engine` module: lower-case names are sub-modules, others are inert classes."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _Absent(f"{self.__name__}.{name}") if name[:1].islower() else type(name, (), {})
        setattr(self, name, value)
        return value


class _AbsentModules(_Absent):
    """A stand-in `transformer_engine` whose classes are (never instantiated) torch modules, for code that
    registers TE layer classes as module types."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        import torch

        value = _AbsentModules(f"{self.__name__}.{name}") if name[:1].islower() else type(name, (torch.nn.Module,), {})
        setattr(self, name, value)
        return value


class _AbsentFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, packages: tuple[str, ...], module_type: type[_Absent] = _Absent) -> None:
        self.packages = packages
        self.module_type = module_type

    def find_spec(self, fullname, path=None, target=None):
        if any(fullname == p or fullname.startswith(f"{p}.") for p in self.packages):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = self.module_type(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module) -> None:
        return None


def has_transformer_engine() -> bool:
    return _installed("transformer_engine")


def import_bridge() -> types.ModuleType:
    """`megatron.bridge`, imported with temporary stand-ins for the optional packages it imports at module level
    (TE; Megatron-Energon, for vision-language data, in Megatron-Bridge >= 0.4) that are not installed."""
    if "megatron.bridge" in sys.modules:
        return sys.modules["megatron.bridge"]
    absent = tuple(p for p in OPTIONAL_PACKAGES if not _installed(p))
    if "transformer_engine" in absent:
        for module in TE_PROBING_MODULES:
            if _installed(module):
                importlib.import_module(module)
    finder = _AbsentFinder(absent)
    sys.meta_path.insert(0, finder)
    try:
        bridge = importlib.import_module("megatron.bridge")
        importlib.import_module("megatron.bridge.training.checkpointing")
        importlib.import_module("megatron.bridge.peft.lora")
    finally:
        sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if finder.find_spec(n)]:
            del sys.modules[name]
    allow_own_targets()
    return bridge


def allow_own_targets() -> None:
    """Let Megatron-Bridge (>= 0.6: an allowlist of `_target_` prefixes) instantiate the run configs this package
    saves, which name `local_packed_layer_spec` as the layer spec; older releases instantiate any target."""
    instantiate = importlib.import_module("megatron.bridge.utils.instantiate_utils")
    if hasattr(instantiate, "register_allowed_target_prefix"):
        instantiate.register_allowed_target_prefix(__name__)


def modelopt_megatron_export():
    """ModelOpt's `export_mcore_gpt_to_hf`. ModelOpt 0.47 imports `megatron.core.models.hybrid` (Megatron-Core >=
    0.17) in the same block as every other Megatron-Core name its exporter uses, so on 0.16 the whole block fails
    and the exporter cannot run; its module is then imported again with a stand-in for that package (its one class,
    HybridModel, only appears in type checks) and the stand-in removed."""
    import modelopt.torch.export.unified_export_megatron as export

    hybrid = "megatron.core.models.hybrid"
    if _installed(hybrid) or "HybridModel" in vars(export):
        return export.export_mcore_gpt_to_hf
    finder = _AbsentFinder((hybrid,))
    sys.meta_path.insert(0, finder)
    try:
        export = importlib.reload(export)
    finally:
        sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if finder.find_spec(n)]:
            del sys.modules[name]
    return export.export_mcore_gpt_to_hf


def import_minitron() -> types.ModuleType:
    """ModelOpt's `mcore_minitron` pruning plugin (its mode registered with `modelopt.torch.prune`).

    ModelOpt's Megatron NAS plugin imports `transformer_engine` and registers Megatron-Core's TE layer classes as
    prunable module types; without TE, Megatron-Core defines those classes over a mock (or as None), ModelOpt's
    plugin loader swallows the failure and the mode is missing. So the plugin is imported with stand-ins: TE
    itself, and those layer names as plain torch module classes (a TE-free model holds none of them); both are
    removed again afterwards. Needs Megatron-Core >= 0.17 (`megatron.core.models.hybrid`)."""
    import_bridge()
    plugin = "modelopt.torch.prune.plugins.mcore_minitron"
    if plugin not in sys.modules and not has_transformer_engine():
        import torch
        from megatron.core.extensions import transformer_engine as te_layers

        mocked = {
            name: value
            for name, value in vars(te_layers).items()
            if name.startswith("TE") and not (isinstance(value, type) and issubclass(value, torch.nn.Module))
            and (value is None or type(value).__module__.startswith("unittest.mock"))
        }  # fmt: skip
        for name in mocked:
            setattr(te_layers, name, type(name, (torch.nn.Module,), {"__module__": te_layers.__name__}))
        finder = _AbsentFinder(("transformer_engine",), _AbsentModules)
        sys.meta_path.insert(0, finder)
        try:
            importlib.import_module(plugin)
        finally:
            sys.meta_path.remove(finder)
            for name in [n for n in sys.modules if finder.find_spec(n)]:
                del sys.modules[name]
            for name, value in mocked.items():
                setattr(te_layers, name, value)
    return importlib.import_module(plugin)


def _installed(module: str) -> bool:
    parent = module.rpartition(".")[0]
    return (not parent or _installed(parent)) and importlib.util.find_spec(module) is not None


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
    if not parallel_state.model_parallel_is_initialized():  # a second bridge in the same process (distill)
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


# Fusions that need TE or Apex kernels are off; Megatron-Core's own (SwiGLU, bias-dropout-add, cross entropy)
# stay as the recipe sets them.
LOCAL_SETTINGS = {
    "cross_entropy_fusion_impl": "native",
    "apply_rope_fusion": False,
    "gradient_accumulation_fusion": False,
    "masked_softmax_fusion": False,
    "persist_layer_norm": False,
    "moe_permute_fusion": False,
    "moe_router_fusion": False,
    "moe_grouped_gemm": False,
    "moe_token_dispatcher_type": "alltoall",
    "moe_flex_dispatcher_backend": None,
}


def local_provider(provider):
    """A model provider set to build Megatron-Core's local (non-TE) layers, with packed-sequence attention
    (PackedDotProductAttention) for GPT models, and RoPE over packed sequences without host syncs."""
    from megatron.bridge.models.gpt_provider import GPTModelProvider

    use_sync_free_thd_rope()
    if isinstance(provider, GPTModelProvider):
        provider.transformer_layer_spec = local_packed_layer_spec
    for name, value in LOCAL_SETTINGS.items():
        if hasattr(provider, name):
            setattr(provider, name, value)
    return provider


def use_sync_free_thd_rope() -> None:
    """Route Megatron-Core's unfused RoPE over packed (THD) sequences through `thd_rope`. Its own version reads
    cu_seqlens to the host (`.tolist()`) in every attention layer, twice: a device sync per call, which stalls the
    GPU between layers; TE's fused kernel, the path that avoids it, is absent here."""
    from megatron.core.models.common.embeddings import rope_utils

    if rope_utils._apply_rotary_pos_emb_thd is not thd_rope:
        thd_rope.library = rope_utils._apply_rotary_pos_emb_thd
        rope_utils._apply_rotary_pos_emb_thd = thd_rope


def thd_rope(t, cu_seqlens, freqs, *args, cp_group=None, **kwargs):
    """RoPE on a THD tensor [t, h, d] whose sequences start at cu_seqlens, each from position 0, as Megatron-Core's
    `_apply_rotary_pos_emb_thd` computes it, with the per-token frequencies gathered on the device (no host sync).
    The library's batches end cu_seqlens at the token count, so freqs with one row per token are the positions
    themselves (its "exact mapping" case). The other arguments (their names vary by release) go on to the
    library's `_apply_rotary_pos_emb_bshd`, as its own version does; context parallelism keeps its own version."""
    import torch
    from megatron.core.models.common.embeddings import rope_utils

    if cp_group is not None and cp_group.size() > 1:
        return thd_rope.library(t, cu_seqlens, freqs, *args, cp_group=cp_group, **kwargs)
    tokens = t.size(0)
    if freqs.size(0) != tokens:
        starts = torch.repeat_interleave(cu_seqlens[:-1].long(), cu_seqlens.diff().long(), output_size=tokens)
        freqs = freqs[torch.arange(tokens, device=t.device) - starts]
    return rope_utils._apply_rotary_pos_emb_bshd(t.unsqueeze(1), freqs, *args, **kwargs).squeeze(1)


def local_packed_layer_spec(config):
    """Megatron-Core's local GPT layer, its core attention able to take packed sequences."""
    from megatron.bridge.models.gpt_provider import local_layer_spec

    spec = local_layer_spec(config)
    spec.submodules.self_attention.submodules.core_attention = packed_attention_class()
    return spec


def packed_attention_class():
    """Megatron-Core's DotProductAttention through fused kernels: packed sequences (THD with cu_seqlens, as
    Megatron-Bridge's packed SFT batches are), causal within each sub-sequence, on CUDA through PyTorch's
    variable-length flash kernel, elsewhere (and with attention dropout) through SDPA with a dense per-bin mask; and
    unpacked batches (pretraining) through SDPA instead of the local class's unfused softmax. Transformer Engine's
    fused attention does this where TE is installed; the local class refuses packed input."""
    import torch
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    class PackedDotProductAttention(DotProductAttention):
        def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                    packed_seq_params=None):  # fmt: skip
            dropout = self.config.attention_dropout if self.training else 0.0
            if packed_seq_params is not None:
                attend = varlen_attention if query.is_cuda and not dropout else dense_packed_attention
                out = attend(query, key, value, packed_seq_params.cu_seqlens_q, self.softmax_scale, dropout)
                return out.reshape(query.shape[0], -1)
            if attention_bias is not None or getattr(self.config, "softmax_type", "vanilla") != "vanilla":
                return super().forward(query, key, value, attention_mask, attn_mask_type, attention_bias)
            q, k, v = (x.permute(1, 2, 0, 3) for x in (query, key, value))  # [s, b, h, d] -> [b, h, s, d]
            out = torch.nn.functional.scaled_dot_product_attention(
                q, k, v,
                attn_mask=None if attention_mask is None else ~attention_mask,  # Megatron's mask: True = masked
                is_causal=attention_mask is None and self.attn_mask_type == AttnMaskType.causal,
                dropout_p=dropout, scale=self.softmax_scale, enable_gqa=True,
            )  # fmt: skip
            return out.permute(2, 0, 1, 3).reshape(query.shape[0], query.shape[1], -1)

    return PackedDotProductAttention


def varlen_attention(query, key, value, cu_seqlens, scale: float | None, dropout: float = 0.0):
    """THD attention through `torch.nn.attention.varlen.varlen_attn` (flash, CUDA), causal within each sequence.
    Tokens after the last boundary (a bin's padding) join the last sequence, as in the dense path; the longest
    sequence is bounded by the bin (no host sync)."""
    import torch
    from torch.nn.attention.varlen import varlen_attn

    tokens = query.shape[0]
    cu = torch.cat(
        [cu_seqlens[:-1].to(query.device, torch.int32), cu_seqlens.new_full((1,), tokens).to(query.device, torch.int32)]
    )
    accepts = inspect.signature(varlen_attn).parameters  # torch 2.9: is_causal; 2.10: window_size; 2.12: enable_gqa
    causal = {"window_size": (-1, 0)} if "window_size" in accepts else {"is_causal": True}
    if "enable_gqa" in accepts:
        causal["enable_gqa"] = True
    else:
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    return varlen_attn(query, key, value, cu, cu, tokens, tokens, scale=scale, **causal)


def dense_packed_attention(query, key, value, cu_seqlens, scale: float | None, dropout: float = 0.0):
    """THD attention through scaled_dot_product_attention with a [tokens, tokens] mask: causal and within the
    sequence (tokens after the last boundary belong to the last sequence)."""
    import torch

    tokens = query.shape[0]
    starts = cu_seqlens[1:-1].to(query.device)
    segment = torch.searchsorted(starts, torch.arange(tokens, device=query.device), right=True)
    allowed = (segment[:, None] == segment[None, :]) & torch.ones(
        tokens, tokens, dtype=torch.bool, device=query.device
    ).tril()
    groups = query.shape[1] // key.shape[1]
    q, k, v = (x.transpose(0, 1).unsqueeze(0) for x in (query, key, value))
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout, scale=scale)
    return out.squeeze(0).transpose(0, 1)


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
