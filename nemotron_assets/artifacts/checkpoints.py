"""checkpoint_hf, checkpoint_lora and checkpoint_megatron contracts: files present and complete, provenance recorded."""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path
from typing import Any

from nemotron_assets.artifacts.files import read_json, read_provenance
from nemotron_assets.errors import contract_error

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def safetensors_parameters(path: Path, error: str) -> int:
    """Parameter count from a safetensors header, after checking the file holds every tensor it declares."""
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise contract_error(error, f"{path}: truncated safetensors header")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > path.stat().st_size - 8:
            raise contract_error(error, f"{path}: file shorter than its safetensors header")
        try:
            header = json.loads(f.read(header_len))
            tensors = {k: v for k, v in header.items() if k != "__metadata__"}
            end = max((int(v["data_offsets"][1]) for v in tensors.values()), default=0)
            parameters = sum(math.prod(int(n) for n in v["shape"]) for v in tensors.values())
        except (ValueError, RecursionError, AttributeError, KeyError, IndexError, TypeError):
            raise contract_error(error, f"{path}: unreadable safetensors header") from None
    if path.stat().st_size < 8 + header_len + end:
        raise contract_error(error, f"{path}: file shorter than its tensors ({path.stat().st_size} bytes)")
    return parameters


def _json(path: Path, error: str) -> dict[str, Any]:
    document = read_json(path, error)
    if not isinstance(document, dict):
        raise contract_error(error, f"{path}: not a JSON object")
    return document


def validate_checkpoint_hf(path: Path) -> dict[str, Any]:
    """An HF model directory transformers can load: config, complete safetensors, tokenizer."""
    error = "missing_hf_config_or_tokenizer"
    config = _json(path / "config.json", error)
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise contract_error(error, f"{path}: no *.safetensors weights")
    if not any((path / name).exists() for name in TOKENIZER_FILES):
        raise contract_error(error, f"{path}: no tokenizer ({' / '.join(TOKENIZER_FILES)})")
    tokenizer_config = _json(path / "tokenizer_config.json", error)
    return {
        "model_type": config.get("model_type"),
        "architectures": config.get("architectures", []),
        "parameters": sum(safetensors_parameters(w, error) for w in weights),
        "weight_files": len(weights),
        "has_chat_template": bool(tokenizer_config.get("chat_template") or (path / "chat_template.jinja").exists()),
    }


def validate_checkpoint_lora(path: Path) -> dict[str, Any]:
    """A PEFT adapter whose exact base (id or path plus fingerprint) is recorded in its provenance."""
    error = "base_not_recorded_for_merge"
    if (path / MEGATRON_TRACKER).exists():
        return _megatron_lora(path, error)
    adapter = _json(path / "adapter_config.json", "invalid_adapter_config")
    modules, rank = adapter.get("target_modules") or [], adapter.get("r")
    names = [modules] if isinstance(modules, str) else modules
    if not isinstance(names, list) or not all(isinstance(m, str) for m in names) or not isinstance(rank, int):
        raise contract_error("invalid_adapter_config", f"{path}: r = {rank!r}, target_modules = {modules!r}")
    weights = sorted(path.glob("adapter_model*.safetensors"))
    if not weights:
        raise contract_error(error, f"{path}: no adapter_model.safetensors")
    base = (read_provenance(path) or {}).get("base_model")
    if not isinstance(base, dict) or not base.get("fingerprint") or not base.get("name_or_path"):
        raise contract_error(error, f"{path}: provenance does not record the base model and its fingerprint")
    return {
        "rank": rank,
        "alpha": adapter.get("lora_alpha"),
        "target_modules": sorted(names),
        "base_model": base["name_or_path"],
        "base_fingerprint": base["fingerprint"],
        "adapter_parameters": sum(safetensors_parameters(w, error) for w in weights),
    }


MEGATRON_TRACKER = "latest_checkpointed_iteration.txt"
MEGATRON_ITERATION = re.compile(r"iter_(\d{7})")
DIST_CKPT_FILES = ("metadata.json", ".metadata")
# the non-sharded state: a common.pt file (Megatron-Core <= 0.16), or a "common_state" object in the shards, named
# in .metadata (later releases)
COMMON_STATE_FILE, COMMON_STATE_KEY = "common.pt", b"common_state"


def megatron_iteration_dir(path: Path) -> Path:
    """The concrete iter_NNNNNNN directory of a Megatron checkpoint: `path` itself, or the one its run
    directory's tracker (latest_checkpointed_iteration.txt) names."""
    path = Path(path)
    if MEGATRON_ITERATION.fullmatch(path.name):
        return path
    tracker = path / MEGATRON_TRACKER
    if not tracker.exists():
        raise contract_error(
            "bad_megatron_checkpoint_path", f"{path}: neither an iter_NNNNNNN directory nor a run directory"
        )
    text = tracker.read_bytes().decode(errors="replace").strip()
    if not (text.isascii() and text.isdigit()):
        raise contract_error("incomplete_megatron_checkpoint", f"{tracker}: {text!r} is not an iteration number")
    return path / f"iter_{int(text):07d}"


def _has_common_state(iteration_dir: Path) -> bool:
    """Whether the checkpoint holds its common state, in either layout (the .metadata pickle is searched as bytes,
    never unpickled)."""
    legacy = (iteration_dir / COMMON_STATE_FILE).exists()
    return legacy or COMMON_STATE_KEY in (iteration_dir / ".metadata").read_bytes()


def validate_checkpoint_megatron(path: Path) -> dict[str, Any]:
    """A complete Megatron distributed checkpoint (torch_dist): one iter_NNNNNNN directory with metadata.json,
    .metadata, its common state and its .distcp shards, given directly or through its run directory's tracker."""
    iteration_dir = megatron_iteration_dir(path)
    if not iteration_dir.is_dir():
        raise contract_error("incomplete_megatron_checkpoint", f"{iteration_dir}: named by the tracker, missing")
    missing = [name for name in DIST_CKPT_FILES if not (iteration_dir / name).exists()]
    if not missing and not _has_common_state(iteration_dir):
        missing.append(f"{COMMON_STATE_FILE} or common state")
    shards = sorted(iteration_dir.glob("*.distcp"))
    if missing or not shards:
        lacking = ", ".join([*missing, *([] if shards else ["*.distcp shards"])])
        raise contract_error("incomplete_megatron_checkpoint", f"{iteration_dir}: no {lacking}")
    metadata = _json(iteration_dir / "metadata.json", "incomplete_megatron_checkpoint")
    tracker = iteration_dir.parent / MEGATRON_TRACKER
    latest = tracker.read_bytes().decode(errors="replace").strip() if tracker.exists() else ""
    return {
        "iteration": int(MEGATRON_ITERATION.fullmatch(iteration_dir.name).group(1)),
        "iteration_dir": iteration_dir.name,
        "latest_iteration": int(latest) if latest.isascii() and latest.isdigit() else None,
        "checkpoint_format": metadata.get("sharded_backend"),
        "shards": len(shards),
        "bytes": sum(f.stat().st_size for f in iteration_dir.iterdir() if f.is_file()),
        "has_run_config": (iteration_dir / "run_config.yaml").exists(),
    }


def _megatron_lora(path: Path, error: str) -> dict[str, Any]:
    """An adapter trained by peft/megatron_bridge: a Megatron checkpoint of the adapter weights, its base recorded."""
    stats = validate_checkpoint_megatron(path)
    provenance = read_provenance(path) or {}
    base = provenance.get("base_model") or {}
    if not base.get("fingerprint") or not base.get("name_or_path"):
        raise contract_error(error, f"{path}: provenance does not record the Megatron base and its fingerprint")
    lora = provenance.get("lora") or {}
    return {
        "format": "megatron",
        "iteration": stats["iteration"],
        "rank": lora.get("dim"),
        "alpha": lora.get("alpha"),
        "target_modules": sorted(lora.get("target_modules") or []),
        "base_model": base["name_or_path"],
        "base_fingerprint": base["fingerprint"],
    }
