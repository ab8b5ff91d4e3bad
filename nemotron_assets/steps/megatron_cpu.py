"""Import Megatron-Bridge 0.3.1 where Transformer Engine is absent (CPU machines), and run it on the CPU.

`megatron.bridge` imports `transformer_engine` at module level (LoRA layers, checkpointing) although the GPT
models it builds on CPU use Megatron-Core's local layer spec. `import_bridge()` first imports the Megatron-Core
and ModelOpt modules that probe for TE (so they record "no TE"), then imports Megatron-Bridge behind a temporary
stand-in finder for `transformer_engine.*`, and removes the stand-in again. `init_distributed()` joins torchrun's
process group (or starts a one-process one); without CUDA it uses gloo and makes the few CUDA calls on the
conversion path (RoPE device, RNG state, synchronize) CPU-safe. `cpu_provider()` selects Megatron-Core's local
(non-TE) layers. Where TE and CUDA exist, the stand-in is not used.
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
}


def cpu_provider(provider):
    """A model provider set to build Megatron-Core's local (non-TE, unfused) layers."""
    from megatron.bridge.models.gpt_provider import local_layer_spec

    provider.transformer_layer_spec = local_layer_spec
    for name, value in CPU_PROVIDER_SETTINGS.items():
        setattr(provider, name, value)
    return provider
