"""Usage and cost of one materialization: wall time, GPU-hours, tokens processed, cost at the profile's price.

GPU-hours are the step's wall time x the GPUs it held where this process holds them for exactly that time (the
local and container executors; in-process steps hold none). A scheduler's job (Slurm, Kubernetes, nemo-run) may
wait in a queue for part of the host's wall time, so its GPU-hours are left out rather than guessed.
"""

from __future__ import annotations

from typing import Any

HELD_FOR_WALL_TIME = ("local", "container")
TOKEN_STATS = ("trained_tokens", "tokens")  # training steps report the first, data preparation the second


def usage(seconds: float, gpus: int, executor: str, stats: dict[str, Any], price: float | None) -> dict[str, Any]:
    """The usage record of a build that ran `seconds` on `gpus` GPUs (all nodes) under `executor`."""
    record: dict[str, Any] = {"wall_seconds": round(seconds, 3), "gpus": gpus}
    if gpus == 0 or executor in HELD_FOR_WALL_TIME:
        record["gpu_hours"] = round(seconds * gpus / 3600, 6)
        if price is not None:
            record["cost"] = round(record["gpu_hours"] * price, 4)
    tokens = next((stats[k] for k in TOKEN_STATS if k in stats), None)
    return record | ({"tokens": tokens} if tokens is not None else {})
