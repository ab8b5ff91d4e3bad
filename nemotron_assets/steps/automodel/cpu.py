"""CPU compatibility layer for NeMo AutoModel 0.7's fine-tune recipe, applied only where CUDA is absent.

The recipe calls CUDA APIs unconditionally: peak-memory statistics, cache clearing and synchronisation, and
`torch.device("cuda", torch.cuda.current_device())` in two modules (model loading and the recipe). Without CUDA
those calls raise. This layer makes the memory and sync calls no-ops and, inside those two modules only, maps
"cuda" devices to the CPU. Everything else (model, data, loss, optimizer, checkpointing) runs the library's own
code path. GPU launches never apply it.
"""

from __future__ import annotations

import types

import torch

PATCHED_MODULES = ("nemo_automodel._transformers.auto_model", "nemo_automodel.recipes.llm.train_ft")


class _CpuTorch(types.ModuleType):
    """`torch` as seen by the patched modules: identical, except that cuda devices are the CPU."""

    def __getattr__(self, name: str):
        return getattr(torch, name)

    @staticmethod
    def device(*args, **kwargs) -> torch.device:
        if args and str(args[0]).startswith("cuda"):
            return torch.device("cpu")
        return torch.device(*args, **kwargs)


class _CpuCuda(types.ModuleType):
    def __getattr__(self, name: str):
        return getattr(torch.cuda, name)

    @staticmethod
    def current_device() -> torch.device:
        return torch.device("cpu")


def apply() -> bool:
    """Patch when there is no CUDA; return whether it did."""
    if torch.cuda.is_available():
        return False
    import importlib

    for name in ("reset_peak_memory_stats", "empty_cache", "synchronize"):
        setattr(torch.cuda, name, lambda *args, **kwargs: None)
    for name in ("max_memory_allocated", "memory_allocated", "max_memory_reserved"):
        setattr(torch.cuda, name, lambda *args, **kwargs: 0)
    cpu_torch = _CpuTorch("torch")
    cpu_torch.cuda = _CpuCuda("torch.cuda")
    for module in PATCHED_MODULES:
        importlib.import_module(module).torch = cpu_torch
    return True
