"""Launching a step's external process: a plain subprocess, or (from Dagster) a Pipes subprocess that streams
its logs and messages back to the run. Steps only see `Launcher`: run this command to completion or raise."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

Launcher = Callable[[list[str], dict[str, str]], None]


class LaunchFailed(RuntimeError):
    """The launched process exited with an error; its last output lines are in the message. Not retried blindly."""


class InfrastructureFailure(RuntimeError):
    """The job was lost to the infrastructure (node failure, preemption, eviction), not failed by the step: a retry
    may succeed, and a training step resumes from its last checkpoint."""


def subprocess_launcher(log: logging.Logger) -> Launcher:
    """Run in a child process, forwarding its output lines to `log`."""

    def launch(command: list[str], env: dict[str, str]) -> None:
        tail: list[str] = []
        with subprocess.Popen(
            command, env=os.environ | env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as process:
            for line in process.stdout:
                log.info(line.rstrip())
                tail = [*tail[-40:], line.rstrip()]
        if process.returncode:
            raise LaunchFailed(f"{command[:4]} exited with {process.returncode}:\n" + "\n".join(tail))

    return launch


@contextlib.contextmanager
def failures_recorded() -> Iterator[None]:
    """In a launched process: write what failed (`oom` or `error`) to $NEMOTRON_FAILURE_FILE, for the parent to
    name whichever launcher ran the process, and re-raise."""
    import torch

    try:
        yield
    except torch.OutOfMemoryError as e:
        _record_failure("oom", str(e))
        raise
    except Exception as e:
        _record_failure("error", f"{type(e).__name__}: {e}")
        raise


def _record_failure(kind: str, detail: str) -> None:
    path = os.environ.get("NEMOTRON_FAILURE_FILE")
    if path:
        Path(path).write_text(json.dumps({"error": kind, "detail": detail[-2000:]}))
