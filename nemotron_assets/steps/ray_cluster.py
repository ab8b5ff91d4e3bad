"""One Ray cluster for every Ray-based step (curation, translation, scaled-out data prep) in a process.

The cluster is the profile's (`ray_address`, or $RAY_ADDRESS set before the process started), attached to and
never stopped; else a local head that NeMo Curator's RayClient starts with the step's CPUs on first use, reused by
every later step asking for as many CPUs and stopped at exit (RayClient's own atexit hook). A step only connects
to it (Curator's executor disconnects when its pipeline ends), so its start-up is paid once, not per step.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from nemotron_assets.steps import StepRun

_local: dict[str, Any] = {}  # the local head this process started: its RayClient and CPUs


def cluster_address(run: StepRun) -> str | None:
    """The Ray cluster the run attaches to: $RAY_ADDRESS set outside this process, else the profile's."""
    if "client" not in _local and os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    return run.ray_address


def cluster(run: StepRun, cpus: int) -> str:
    """The address of the run's Ray cluster, starting (or resizing) this process's local head if it needs one."""
    address = cluster_address(run)
    if address is not None:
        return address
    if _local.get("cpus") != cpus:
        from nemo_curator.core.client import RayClient

        stop_local()
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no ~/.ray/auth_token
        if shutil.which("ray") is None:  # RayClient runs `ray start`: this interpreter's, as in its environment
            os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        client = RayClient(num_cpus=cpus, include_dashboard=False)
        client.start()  # sets RAY_ADDRESS, which Curator's executor and ray.init() connect to
        _local.update(client=client, cpus=cpus)
    return os.environ["RAY_ADDRESS"]


def connect(run: StepRun, cpus: int) -> None:
    """Connect this process to the run's Ray cluster (see `cluster`); `ray.shutdown()` only disconnects."""
    import ray

    address = cluster(run, cpus)
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)


def stop_local() -> None:
    """Stop the local head this process started, if any."""
    if "client" in _local:
        _local.pop("client").stop()
        _local.pop("cpus")
