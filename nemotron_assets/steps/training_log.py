"""Summaries of a training run from the recipe's own metrics log (`training.jsonl`): stats and a loss curve."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path
from typing import Any

LOSS_CURVE = "loss_curve.png"
TRAINING_LOG = "training_log.jsonl"


def read_steps(log: Path) -> list[dict[str, Any]]:
    """One record per optimizer step; a resumed run's re-logged steps keep their latest values."""
    by_step = {}
    for line in log.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            by_step[record["step"]] = record
    return [by_step[step] for step in sorted(by_step)]


def plot_loss(steps: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3), dpi=100)
    axis.plot([s["step"] for s in steps], [s["loss"] for s in steps], marker=".")
    axis.set(xlabel="step", ylabel="training loss", title="loss curve")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def training_stats(log: Path, output_dir: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Stats of the run and its plots (title -> file in `output_dir`); the log is kept beside the model."""
    steps = read_steps(log)
    shutil.copy2(log, output_dir / TRAINING_LOG)
    plot_loss(steps, output_dir / LOSS_CURVE)
    steady = steps[1:] or steps  # the first step includes warm-up
    stats = {
        "steps": steps[-1]["step"] + 1,  # optimizer steps done; a killed attempt may not have flushed its log
        "logged_steps": len(steps),
        "first_loss": round(steps[0]["loss"], 4),
        "final_loss": round(steps[-1]["loss"], 4),
        "tokens_per_second": round(statistics.fmean(s["tps"] for s in steady), 1),
        "trained_tokens": sum(s.get("num_tokens_per_step", 0) for s in steps),
    }
    mfu = [s["mfu"] for s in steady if s.get("mfu") is not None]  # the recipe's, in percent of the device's peak
    if mfu:
        stats["mfu_percent"] = round(statistics.fmean(mfu), 1)
    return stats, {"loss curve": LOSS_CURVE}
