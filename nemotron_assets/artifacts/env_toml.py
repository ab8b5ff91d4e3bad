"""env_toml: nemo-run environment profile files: valid TOML whose every `extends` names a profile in the file."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from nemotron_assets.errors import contract_error

RESERVED = ("wandb", "cli", "cache", "artifacts")  # tables that are not profiles


def profiles(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: table for name, table in document.items() if name not in RESERVED and isinstance(table, dict)}


def validate_env_toml(path: Path) -> dict[str, Any]:
    files = [path] if path.is_file() else sorted(path.rglob("*.toml"))
    if not files:
        raise contract_error("invalid_env_toml", f"{path}: no .toml file")
    count = 0
    for file in files:
        try:
            found = profiles(tomllib.loads(file.read_text()))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise contract_error("invalid_env_toml", f"{file}: {e}") from None
        broken = sorted(n for n, t in found.items() if "extends" in t and t["extends"] not in found)
        if broken:
            raise contract_error("invalid_env_toml", f"{file}: {broken} extend a profile that is not in the file")
        count += len(found)
    return {"files": len(files), "profiles": count}
