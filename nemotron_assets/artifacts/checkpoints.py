"""checkpoint_hf and checkpoint_lora contracts: required files present, safetensors intact, provenance recorded."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from nemotron_assets.artifacts.files import read_provenance
from nemotron_assets.errors import contract_error

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def safetensors_parameters(path: Path, error: str) -> int:
    """Parameter count from a safetensors header, after checking the file holds every tensor it declares."""
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise contract_error(error, f"{path}: truncated safetensors header")
        (header_len,) = struct.unpack("<Q", raw)
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise contract_error(error, f"{path}: unreadable safetensors header") from None
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    end = max((v["data_offsets"][1] for v in tensors.values()), default=0)
    if path.stat().st_size < 8 + header_len + end:
        raise contract_error(error, f"{path}: file shorter than its tensors ({path.stat().st_size} bytes)")
    return sum(math.prod(v["shape"]) for v in tensors.values())


def _json(path: Path, error: str) -> dict[str, Any]:
    if not path.exists():
        raise contract_error(error, f"{path.parent}: no {path.name}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise contract_error(error, f"{path}: {e}") from None


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
    adapter = _json(path / "adapter_config.json", error)
    weights = sorted(path.glob("adapter_model*.safetensors"))
    if not weights:
        raise contract_error(error, f"{path}: no adapter_model.safetensors")
    modules = adapter.get("target_modules") or []
    base = (read_provenance(path) or {}).get("base_model") or {}
    if not base.get("fingerprint") or not base.get("name_or_path"):
        raise contract_error(error, f"{path}: provenance does not record the base model and its fingerprint")
    return {
        "rank": adapter.get("r"),
        "alpha": adapter.get("lora_alpha"),
        "target_modules": [modules] if isinstance(modules, str) else sorted(modules),
        "base_model": base["name_or_path"],
        "base_fingerprint": base["fingerprint"],
        "adapter_parameters": sum(safetensors_parameters(w, error) for w in weights),
    }
