"""Usage and cost of one materialization: wall time, GPU-hours, peak GPU memory, tokens processed, cost at the
profile's price.

GPU-hours come from where the GPUs were held: the step's wall time x its GPUs where this process holds them for
exactly that time (the local and container executors; in-process steps hold none); the scheduler's own record of
each launched job where a scheduler ran it (Slurm: sacct's elapsed time x allocated GPUs; Kubernetes: the pod's
container run time x the GPUs it requested), since a queued job's host wall time includes its wait. Where a
launched job has no such record (Lepton, DGX Cloud), GPU-hours are left out rather than guessed. The peak GPU memory
is the highest a launched job reported over Pipes (on CUDA only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nemotron_assets.steps.launch import Launcher, Measured

HELD_FOR_WALL_TIME = ("local", "container")
TOKEN_STATS = ("trained_tokens", "tokens")  # training steps report the first, data preparation the second


def metered(launcher: Launcher, launches: list[Measured]) -> Launcher:
    """`launcher`, appending what each launch measured to `launches` (an empty `Measured` where it measured none)."""

    def launch(command: list[str], env: dict[str, str]) -> Measured | None:
        result = launcher(command, env)
        launches.append(result or Measured())
        return result

    return launch


def gpu_hours(seconds: float, gpus: int, executor: str, launches: Sequence[Measured]) -> tuple[float, str] | None:
    """(GPU-hours, where they come from): the scheduler's records where every launched job has one, else the wall
    time x GPUs where they were held for it; None where neither is known."""
    if launches and all(m.gpu_hours is not None for m in launches):
        return sum(m.gpu_hours for m in launches), launches[0].gpu_hours_from
    if gpus == 0 or executor in HELD_FOR_WALL_TIME:
        return seconds * gpus / 3600, "wall_time"
    return None


def usage(
    seconds: float,
    gpus: int,
    executor: str,
    stats: dict[str, Any],
    price: float | None,
    launches: Sequence[Measured] = (),
) -> dict[str, Any]:
    """The usage record of a build that ran `seconds` on `gpus` GPUs (all nodes) under `executor`, having launched
    the jobs `launches` describes."""
    record: dict[str, Any] = {"wall_seconds": round(seconds, 3), "gpus": gpus}
    if (held := gpu_hours(seconds, gpus, executor, launches)) is not None:
        record |= {"gpu_hours": round(held[0], 6), "gpu_hours_from": held[1]}
        if price is not None:
            record["cost"] = round(record["gpu_hours"] * price, 4)
    peaks = [m.peak_gpu_memory_gb for m in launches if m.peak_gpu_memory_gb is not None]
    record |= {"peak_gpu_memory_gb": max(peaks)} if peaks else {}
    tokens = next((stats[k] for k in TOKEN_STATS if k in stats), None)
    return record | ({"tokens": tokens} if tokens is not None else {})
