"""A real single-node Slurm on localhost for the launcher tests: munged, slurmctld and slurmd in a temporary
directory, with their own key, socket, ports and state. Skips only when the Slurm binaries are not installed
(.ci/run installs them)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

PARTITION = "debug"
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "sinfo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_conf(directory: Path, host: str, munge_socket: Path) -> str:
    cpus, memory_mb = os.cpu_count() or 1, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    return f"""\
ClusterName=nemotron-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
StateSaveLocation={directory}/state
SlurmdSpoolDir={directory}/spool
SlurmctldPidFile={directory}/slurmctld.pid
SlurmdPidFile={directory}/slurmd.pid
SlurmctldLogFile={directory}/slurmctld.log
SlurmdLogFile={directory}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=600
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _wait_for(condition, what: str, logs: list[Path], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p}\n" + p.read_text()[-2000:] for p in logs if p.exists())
            raise RuntimeError(f"local Slurm: {what} not reached in {timeout}s\n{tails}")
        time.sleep(0.5)


def _node_idle() -> bool:
    out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return out.returncode == 0 and out.stdout.strip() == "idle"


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Start the cluster once per session; yields its directory (logs, state). SLURM_CONF points at it."""
    missing = [name for name in DAEMONS if shutil.which(name, path=f"/usr/sbin:{os.environ['PATH']}") is None]
    if missing:
        pytest.skip(f"Slurm not installed here (missing {', '.join(missing)}); .ci/run installs it from Debian")
    directory = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "munge"):
        (directory / sub).mkdir(mode=0o700)
    key, munge_socket = directory / "munge" / "munge.key", directory / "munge" / "munge.socket"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    host = socket.gethostname().split(".")[0]
    conf = directory / "slurm.conf"
    conf.write_text(slurm_conf(directory, host, munge_socket))
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    logs = [directory / "munge" / "munged.log", directory / "slurmctld.log", directory / "slurmd.log"]
    munge_files = [f"--{opt}-file={directory}/munge/munged.{opt}" for opt in ("log", "pid", "seed")]
    daemons = [
        ["munged", "-F", "--force", f"-S{munge_socket}", f"--key-file={key}", *munge_files],
        ["slurmctld", "-D", "-i", "-f", str(conf)],
        ["slurmd", "-D", "-f", str(conf)],
    ]
    processes: list[subprocess.Popen] = []
    try:
        for command in daemons:
            command[0] = shutil.which(command[0], path=f"/usr/sbin:{os.environ['PATH']}")
            processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            if command[0].endswith("munged"):
                _wait_for(munge_socket.exists, "munge socket", logs)
        _wait_for(_node_idle, "node idle in sinfo", logs)
        yield directory
    finally:
        for process in reversed(processes):
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
