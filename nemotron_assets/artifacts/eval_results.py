"""eval_results: scores per task, the exact settings, and the checkpoint evaluated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nemotron_assets.errors import contract_error

FILES = ("results.json", "settings.json", "checkpoint.json")


def validate_eval_results(path: Path) -> dict[str, Any]:
    missing = [name for name in FILES if not (path / name).exists()]
    if missing:
        raise contract_error("invalid_eval_results", f"{path}: missing {missing}")
    try:
        scores = json.loads((path / "results.json").read_text())["scores"]
    except (json.JSONDecodeError, KeyError):
        raise contract_error("invalid_eval_results", f"{path}/results.json has no `scores`") from None
    numbers = {
        f"{task}/{metric}": value
        for task, metrics in scores.items()
        for metric, value in metrics.items()
        if isinstance(value, int | float)
    }
    if not numbers:
        raise contract_error("invalid_eval_results", f"{path}/results.json has no numeric score")
    return {"tasks": len(scores)} | numbers
