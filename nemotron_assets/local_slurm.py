"""A real single-node Slurm on this machine (munged, a MariaDB for accounting, slurmdbd, slurmctld, slurmd in one
directory, with their own key, sockets, ports and state): to try the Slurm profile without a cluster
(`nemotron-assets slurm up`) and for the launcher's tests. Jobs are accounted (sacct) as on a real cluster. Needs the
Debian packages slurmctld, slurmd, slurmdbd, slurm-client, munge and mariadb-server."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nemotron_assets.paths import STATE_DIR

PARTITION = "debug"
CLUSTER = "nemotron-local"
PACKAGES = "slurmctld slurmd slurmdbd slurm-client munge mariadb-server"
PROGRAMS = (
    "munged",
    "mariadbd",
    "slurmdbd",
    "slurmctld",
    "slurmd",
    "sbatch",
    "scontrol",
    "scancel",
    "sinfo",
    "sacct",
    "sacctmgr",
)
PROFILE = "slurm_local"


def missing_programs() -> list[str]:
    return [name for name in PROGRAMS if _which(name) is None]


def _which(name: str) -> str | None:
    return shutil.which(name, path=f"/usr/sbin:{os.environ['PATH']}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_conf(directory: Path, host: str, munge_socket: Path, dbd_port: int) -> str:
    cpus, memory_mb = os.cpu_count() or 1, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    return f"""\
ClusterName={CLUSTER}
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
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={dbd_port}
AccountingStoragePass={munge_socket}
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
MinJobAge=600
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def slurmdbd_conf(directory: Path, host: str, munge_socket: Path, dbd_port: int, db_port: int) -> str:
    """slurmdbd over the MariaDB on loopback (no grant tables: only this machine reaches it)."""
    return f"""\
AuthType=auth/munge
AuthInfo=socket={munge_socket}
DbdHost={host}
DbdAddr=127.0.0.1
DbdPort={dbd_port}
SlurmUser=root
PidFile={directory}/slurmdbd.pid
LogFile={directory}/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={db_port}
StorageUser=root
StorageLoc=slurm_acct_db
"""


def mariadb_command(directory: Path, port: int) -> list[str]:
    """A MariaDB server for accounting only: its data under `directory`, loopback TCP, no grant tables, small
    buffers and no durability (a test cluster's accounting may be lost with its directory)."""
    db = directory / "mariadb"
    return [
        "mariadbd",
        "--no-defaults",
        f"--user={getpass.getuser()}",
        f"--datadir={db}/data",
        f"--socket={db}/mariadb.sock",
        f"--pid-file={db}/mariadb.pid",
        f"--log-error={db}/mariadb.log",
        f"--port={port}",
        "--bind-address=127.0.0.1",
        "--skip-grant-tables",
        "--skip-log-bin",
        "--innodb-buffer-pool-size=16M",
        "--innodb-log-file-size=8M",
        "--innodb-flush-log-at-trx-commit=0",
        "--innodb-doublewrite=0",
    ]


def profile_toml() -> str:
    """A hardware profile for this cluster: Slurm executor, this machine's CPUs, no GPUs; the storage is this
    project's state directory (artifact root, fixtures), which the one node shares with the Dagster host."""
    memory_gb = max(1, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**30)
    return (
        f'description = "The local single-node Slurm (nemotron-assets slurm up)."\nexecutor = "slurm"\nnodes = 1\n'
        f"gpus_per_node = 0\ncpus = {os.cpu_count() or 1}\nmemory_gb = {memory_gb}\n\n"
        f'[storage]\nhost_path = "{STATE_DIR}"\n\n[slurm]\npartition = "{PARTITION}"\ntime = "04:00:00"\n'
    )


def _wait_for(condition, what: str, logs: list[Path], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p}\n" + p.read_text()[-2000:] for p in logs if p.exists())
            raise RuntimeError(f"local Slurm: {what} not reached in {timeout}s\n{tails}")
        time.sleep(0.5)


def _answers(conf: Path, *command: str) -> bool:
    return subprocess.run(command, capture_output=True, env=os.environ | _env(conf)).returncode == 0


def _node_idle(conf: Path) -> bool:
    out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=os.environ | _env(conf))
    return out.returncode == 0 and out.stdout.strip() == "idle"


def _env(conf: Path) -> dict[str, str]:
    return {"SLURM_CONF": str(conf)}


def start(directory: Path) -> None:
    """Write the configuration and a `slurm_local` profile into `directory`, start the daemons in their own
    sessions and wait until the node is idle. Clients reach it with SLURM_CONF=<directory>/slurm.conf."""
    if missing := missing_programs():
        raise RuntimeError(f"Slurm is not installed (missing {', '.join(missing)}): apt-get install {PACKAGES}")
    for sub in ("state", "spool", "munge", "mariadb/data"):
        (directory / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
    key, munge_socket = directory / "munge" / "munge.key", directory / "munge" / "munge.socket"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    host, dbd_port, db_port = socket.gethostname().split(".")[0], _free_port(), _free_port()
    conf = directory / "slurm.conf"
    conf.write_text(slurm_conf(directory, host, munge_socket, dbd_port))
    dbd_conf = directory / "slurmdbd.conf"  # slurmdbd reads it beside $SLURM_CONF; only its user may read it
    dbd_conf.write_text(slurmdbd_conf(directory, host, munge_socket, dbd_port, db_port))
    dbd_conf.chmod(0o600)
    (directory / f"{PROFILE}.toml").write_text(profile_toml())
    logs = [
        directory / "munge" / "munged.log",
        directory / "mariadb" / "mariadb.log",
        directory / "slurmdbd.log",
        directory / "slurmctld.log",
        directory / "slurmd.log",
    ]
    munge_files = [f"--{opt}-file={directory}/munge/munged.{opt}" for opt in ("log", "pid", "seed")]
    daemons = [
        ["munged", "-F", "--force", f"-S{munge_socket}", f"--key-file={key}", *munge_files],
        mariadb_command(directory, db_port),
        ["slurmdbd", "-D"],
        ["slurmctld", "-D", "-i", "-f", str(conf)],
        ["slurmd", "-D", "-f", str(conf)],
    ]
    pids: list[str] = []
    try:
        for name, *arguments in daemons:
            command = [_which(name), *arguments]
            # its own session: outlives `nemotron-assets slurm up`
            daemon = subprocess.Popen(
                command,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                env=os.environ | _env(conf),
            )
            pids.append(str(daemon.pid))
            (directory / "daemons.pid").write_text(" ".join(pids))
            if name == "munged":
                _wait_for(munge_socket.exists, "munge socket", logs)
            elif name == "mariadbd":
                _wait_for((directory / "mariadb" / "mariadb.sock").exists, "MariaDB socket", logs)
            elif name == "slurmdbd":
                _wait_for(lambda: _answers(conf, "sacctmgr", "-n", "list", "cluster"), "slurmdbd answering", logs)
                if not _answers(conf, "sacctmgr", "-i", "add", "cluster", CLUSTER):
                    raise RuntimeError(f"local Slurm: sacctmgr could not register cluster {CLUSTER}")
        _wait_for(lambda: _node_idle(conf), "node idle in sinfo", logs)
    except BaseException:
        stop(directory)
        raise


def stop(directory: Path) -> None:
    """Stop the daemons `start` left in `directory` (SIGTERM, then SIGKILL after 30 s)."""
    pids_file = directory / "daemons.pid"
    if not pids_file.exists():
        return
    for pid in reversed([int(p) for p in pids_file.read_text().split()]):
        for sig, patience in ((signal.SIGTERM, 60), (signal.SIGKILL, 10)):
            if _ended(pid):
                break
            os.kill(pid, sig)
            for _ in range(patience):
                if _ended(pid):
                    break
                time.sleep(0.5)
    pids_file.unlink()


def _ended(pid: int) -> bool:
    """Whether `pid` is gone (reaping it when it is this process's child)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@contextmanager
def running(directory: Path) -> Iterator[Path]:
    """The cluster for the duration of the block, with SLURM_CONF set in this process; yields its directory."""
    previous = os.environ.get("SLURM_CONF")
    start(directory)
    os.environ["SLURM_CONF"] = str(directory / "slurm.conf")
    try:
        yield directory
    finally:
        stop(directory)
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
