"""eval_results: scores per task, the exact settings, and the checkpoint evaluated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nemotron_assets.artifacts.files import read_json
from nemotron_assets.errors import contract_error

FILES = ("results.json", "settings.json", "checkpoint.json")


def validate_eval_results(path: Path) -> dict[str, Any]:
    missing = [name for name in FILES if not (path / name).exists()]
    if missing:
        raise contract_error("invalid_eval_results", f"{path}: missing {missing}")
    results = read_json(path / "results.json", "invalid_eval_results")
    scores = results.get("scores") if isinstance(results, dict) else None
    if not isinstance(scores, dict) or not all(isinstance(metrics, dict) for metrics in scores.values()):
        raise contract_error("invalid_eval_results", f"{path}/results.json has no `scores` of {{task: {{metric}}}}")
    numbers = {
        f"{task}/{metric}": value
        for task, metrics in scores.items()
        for metric, value in metrics.items()
        if isinstance(value, int | float)
    }
    if not numbers:
        raise contract_error("invalid_eval_results", f"{path}/results.json has no numeric score")
    return {"tasks": len(scores)} | numbers
