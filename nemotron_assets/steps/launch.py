"""Launching a step's job: the job spec written onto the profile's storage, and the one command that runs it.

A step calls `StepRun.launch_job(backend, args)`; every path in `args` given as a `Path` is a host path, written
into the spec as the job sees it (`PathMap`), so the job reads and writes only the storage its executor mounts.
The launcher the profile chose (a Pipes subprocess here, Slurm, Kubernetes, a container, Lepton, DGX Cloud) runs
`python -m nemotron_assets.job <spec>` in the backend's image. Steps only see `Launcher`: run this command to
completion or raise; a launcher may return what it `Measured` of the job (usage.py records it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nemotron_assets.errors import contract_error
from nemotron_assets.job import PEAK_GPU_MEMORY


@dataclass(frozen=True)
class Measured:
    """What a launcher measured of one finished job: GPU-hours from the scheduler's own record (`gpu_hours_from`
    names it) and the peak GPU memory the job reported over Pipes; None where there is no such figure."""

    gpu_hours: float | None = None
    gpu_hours_from: str | None = None
    peak_gpu_memory_gb: float | None = None


def measured(messages: Sequence[Any], gpu_hours: float | None = None, gpu_hours_from: str | None = None) -> Measured:
    """A job's measurement: the scheduler's GPU-hours, and the highest peak GPU memory among the job's Pipes custom
    messages (job.report_peak_gpu_memory)."""
    peaks = [m[PEAK_GPU_MEMORY] for m in messages if isinstance(m, dict) and PEAK_GPU_MEMORY in m]
    return Measured(gpu_hours, gpu_hours_from, max(peaks) if peaks else None)


Launcher = Callable[[list[str], dict[str, str]], Measured | None]
MISSING_PACKAGE = ("No module named 'nemotron_assets'", "No module named nemotron_assets")


class LaunchFailed(RuntimeError):
    """The launched process exited with an error; its last output lines are in the message. Not retried blindly."""


class InfrastructureFailure(RuntimeError):
    """The job was lost to the infrastructure (node failure, preemption, eviction), not failed by the step: a retry
    may succeed, and a training step resumes from its last checkpoint."""


@dataclass(frozen=True)
class PathMap:
    """How a job sees the host's files: (host prefix, job prefix) pairs of the storage the profile mounts. With no
    pairs the job sees the host's own filesystem (this machine's executors)."""

    pairs: tuple[tuple[str, str], ...] = ()

    def to_job(self, path: Path | str) -> str:
        """`path` as the job sees it; input_outside_storage when no mount holds it."""
        absolute = os.path.abspath(path)
        if not self.pairs:
            return absolute
        for host, job in sorted(self.pairs, key=lambda pair: -len(pair[0])):
            host = host.rstrip("/") or "/"
            if absolute == host or absolute.startswith(host.rstrip("/") + "/"):
                return job.rstrip("/") + absolute[len(host.rstrip("/")) :] if job != "/" else absolute[len(host) :]
        mounted = ", ".join(host for host, _ in self.pairs)
        raise contract_error("input_outside_storage", f"{absolute} is on no storage the job mounts ({mounted})")

    def name(self, value: str | Path) -> str:
        """A model or data name as the job sees it: a local path mapped, a hub id unchanged."""
        path = value if isinstance(value, Path) else as_path(value)
        return self.to_job(path) if isinstance(path, Path) else value

    def args(self, value: Any) -> Any:
        """A job's arguments with every `Path` in them mapped into the job's filesystem."""
        if isinstance(value, Path):
            return self.to_job(value)
        if isinstance(value, dict):
            return {k: self.args(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.args(v) for v in value]
        return value


LOCAL = PathMap()  # the job sees this machine's filesystem as it is


def as_path(value: str) -> Path | str:
    """A parameter naming an existing local file or directory as a Path (mapped into the job); a hub id or any
    other name stays a string."""
    return Path(value) if os.sep in value and Path(value).exists() else value


def stream(command: list[str], env: dict[str, str], log: logging.Logger) -> None:
    """Run `command` with exactly `env`, forwarding its output lines to `log`; LaunchFailed with its last lines."""
    tail: list[str] = []
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        for line in process.stdout:
            log.info(line.rstrip())
            tail = [*tail[-40:], line.rstrip()]
    if process.returncode:
        raise LaunchFailed(f"{command[:4]} exited with {process.returncode}:\n" + "\n".join(tail))


def subprocess_launcher(log: logging.Logger) -> Launcher:
    """Run in a child process of this environment (its bin first on PATH), forwarding its output lines to `log`."""
    return lambda command, env: stream(command, local_env(env), log)


def local_env(env: dict[str, str]) -> dict[str, str]:
    """The environment of a job on this machine: this environment is its image, so its interpreter's directory
    comes first on PATH (the job command's `python` is this one)."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return os.environ | env | {"PATH": path}


@contextlib.contextmanager
def scoped_environ(values: dict[str, str]) -> Iterator[None]:
    """`values` in this process's os.environ for the block only; the variables are restored afterwards."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def missing_package(error: Exception) -> bool:
    """The job's image has no nemotron_assets (its interpreter said so)."""
    return any(sign in str(error) for sign in MISSING_PACKAGE)


def image_error(error: Exception) -> Exception:
    if missing_package(error):
        return contract_error("job_image_missing_package", str(error)[-500:])
    return error
