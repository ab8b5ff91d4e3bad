"""Container launcher: each job in a root filesystem of its own on this machine, the storage bound at the path the
profile gives jobs, no network but loopback, nothing else of the host visible.

The runtime is podman or docker where one runs here (the backend's image from [images]), else bubblewrap over a
Debian root filesystem built once by debootstrap (`nemotron-assets rootfs build`): Python 3.11 in a virtual
environment at /opt/nemotron holding the job's libraries at the host's pins and this package, at another prefix
than the repository's .venv. The package layer follows the code: a changed checkout reinstalls it (the job
refuses a spec written by other code anyway, job_image_stale). Dagster Pipes runs over files on the storage.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import dagster as dg

from nemotron_assets.errors import contract_error
from nemotron_assets.job import source_digest
from nemotron_assets.launchers import backend_image, env_values, job_paths, step_kind, storage_pipes
from nemotron_assets.paths import PACKAGE_DIR, PROJECT_ROOT, expand
from nemotron_assets.steps.launch import Launcher, Measured, PathMap, measured, stream
from resources.profile import Profile

PREFIX = "/opt/nemotron"  # the job's Python environment inside the root filesystem
SITE = f"{PREFIX}/lib/python3.11/site-packages"
SUITE = "bookworm"
BASE = Path(sys.base_prefix)  # the Python 3.11 this environment was made from; the pins are built for it
SKIPPED = shutil.ignore_patterns("site-packages", "test", "tests", "idlelib", "tkinter", "turtledemo", "__pycache__")
SOURCE = ("pyproject.toml", "README.md", "nemotron_assets", "resources")  # what the package is built from
SRC, REQUIREMENTS = "/var/tmp/nemotron-src", "/var/tmp/nemotron-requirements.txt"  # build inputs, then removed
CACHES = shutil.ignore_patterns("__pycache__", "*.pyc")
STAMP = ".nemotron-rootfs.json"  # what a built root filesystem holds: its libraries' pins, the package's digest
JOB_ENV = {"PATH": f"{PREFIX}/bin:/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}
PASSED = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")  # the offline switches, by value


def runtime(profile: Profile) -> str:
    """The profile's runtime; `auto`: podman or docker when its daemon answers here, else bubblewrap."""
    chosen = profile.container.runtime
    if chosen != "auto":
        return chosen
    for candidate in ("podman", "docker"):
        if shutil.which(candidate) and subprocess.run([candidate, "info"], capture_output=True).returncode == 0:
            return candidate
    if shutil.which("bwrap"):
        return "bwrap"
    raise contract_error("container_runtime_missing", "neither podman, docker nor bwrap (bubblewrap) runs here")


def bwrap_command(rootfs: Path, paths: PathMap, command: list[str]) -> list[str]:
    """bubblewrap: the root filesystem read-only, the storage read-write and the mounts read-only at the job's
    paths, fresh /proc /dev /tmp, every namespace unshared (the network has only loopback)."""
    storage, *mounts = paths.pairs
    for _, job in paths.pairs:  # mount points must exist in the read-only root
        (rootfs / job.lstrip("/")).mkdir(parents=True, exist_ok=True)
    argv = ["bwrap", "--ro-bind", str(rootfs), "/", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/dev/shm"]
    argv += ["--tmpfs", "/tmp"]
    argv += ["--bind", *storage, *(flag for mount in mounts for flag in ("--ro-bind", *mount))]
    return [*argv, "--unshare-all", "--die-with-parent", "--chdir", storage[1], *command]


def oci_command(tool: str, image: str, paths: PathMap, command: list[str], env: list[str], gpus: int) -> list[str]:
    """podman or docker run: the same mounts, no network, variables by name (values from this process)."""
    (host, job), *mounts = paths.pairs
    volumes = [f"{host}:{job}", *(f"{h}:{j}:ro" for h, j in mounts)]
    argv = [tool, "run", "--rm", "--network=none", "--workdir", job]
    argv += [flag for volume in volumes for flag in ("--volume", volume)]
    argv += [flag for name in env for flag in ("--env", name)]
    argv += ["--device", "nvidia.com/gpu=all"] if gpus and tool == "podman" else ["--gpus", "all"] if gpus else []
    return [*argv, image, *command]


def container_launcher(context: dg.AssetExecutionContext, profile: Profile, gpus: int) -> Launcher:
    """Run each job in its own container of the profile's runtime, streaming its output and Pipes messages."""

    def launch(command: list[str], env: dict[str, str]) -> Measured:
        paths = job_paths(profile)
        tool = runtime(profile)
        name = "nemotron-" + context.asset_key.to_user_string().replace("/", "-")
        directory = Path(paths.pairs[0][0]) / ".nemotron-jobs" / f"{name}-{uuid.uuid4().hex[:8]}"
        directory.mkdir(parents=True)
        with storage_pipes(context, directory, paths) as (pipes_env, session):
            job_env = job_environment(profile, env | pipes_env)
            if tool == "bwrap":
                argv = bwrap_command(ensure_rootfs(rootfs_dir(profile)), paths, command)
            else:
                image = backend_image(profile, step_kind(context))
                argv = oci_command(tool, image, paths, command, sorted(job_env), gpus)
                job_env = os.environ | job_env
            stream(argv, job_env, context.log)
        return measured(session.get_custom_messages())

    return launch


def job_environment(profile: Profile, env: dict[str, str]) -> dict[str, str]:
    """Only what the job is given: its PATH and HOME, the offline switches, the profile's named variables."""
    offline = {name: os.environ[name] for name in PASSED if name in os.environ}
    return JOB_ENV | offline | env_values(profile, profile.env_vars) | env


def rootfs_dir(profile: Profile) -> Path:
    return Path(expand(profile.container.rootfs))


def ensure_rootfs(rootfs: Path) -> Path:
    """The built root filesystem with this checkout's package in it (reinstalled when the code changed)."""
    if not built(rootfs):
        raise contract_error("container_rootfs_missing", f"{rootfs}: not built for this environment's pins")
    stamp = read_stamp(rootfs)
    if stamp["package"] != source_digest():
        install_package(rootfs)
    return rootfs


def read_stamp(rootfs: Path) -> dict | None:
    return json.loads((rootfs / STAMP).read_text()) if (rootfs / STAMP).exists() else None


@functools.cache
def identity() -> dict[str, list[str]]:
    """What a root filesystem is built from: its Debian packages and the Python libraries' pins (computed once per
    process: pip freeze, ldd and dpkg take seconds; a launch then checks only the package digest)."""
    return {"debian": system_packages(), "pins": pins()}


def built(rootfs: Path) -> bool:
    stamp = read_stamp(rootfs)
    return stamp is not None and {key: stamp.get(key) for key in ("debian", "pins")} == identity()


def system_packages() -> list[str]:
    """The interpreter's shared libraries, certificates, and a C++ compiler (torch's inductor compiles kernels)."""
    return sorted({"ca-certificates", "g++", *interpreter_packages()})


def pins() -> list[str]:
    """The job's libraries at the host's exact versions: this environment's packages, less this one and pip."""
    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable"], capture_output=True, text=True
    )
    keep = (line for line in frozen.stdout.splitlines() if line and not line.startswith(("#", "-e ")))
    return sorted(line for line in keep if not re.match(r"(pip|nemotron[-_]assets)\b", line, re.I))


def build_rootfs(rootfs: Path, mirror: str | None = None) -> Path:
    """debootstrap a Debian root filesystem, create /opt/nemotron in it and install the pinned libraries and this
    package there. Built beside the target and renamed into place when complete; a built one is kept."""
    if built(rootfs):
        return ensure_rootfs(rootfs)
    staging = rootfs.with_name(f".{rootfs.name}.tmp-{uuid.uuid4().hex[:8]}")
    staging.parent.mkdir(parents=True, exist_ok=True)
    try:
        mirror = mirror or os.environ.get("NEMOTRON_DEBIAN_MIRROR", "http://deb.debian.org/debian")
        packages = ",".join(identity()["debian"])
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={packages}", SUITE, str(staging), mirror], check=True
        )
        copy_interpreter(staging)
        inside(staging, [f"{BASE}/bin/python3.11", "-m", "venv", PREFIX])
        requirements = staging / REQUIREMENTS.lstrip("/")
        requirements.write_text("\n".join(identity()["pins"]) + "\n")
        inside(staging, [f"{PREFIX}/bin/pip", "install", "--no-deps", "-r", REQUIREMENTS])
        requirements.unlink()
        (staging / STAMP).write_text(json.dumps(identity() | {"package": None}))
        install_package(staging)
        shutil.rmtree(rootfs, ignore_errors=True)
        staging.rename(rootfs)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return rootfs


def copy_interpreter(rootfs: Path) -> None:
    """The base interpreter into the root filesystem at its own prefix (its libraries and headers, no
    site-packages): the job environment's pins (e.g. soupsieve 4.1.4 needs Python >= 3.11.5) then hold there
    exactly; Debian bookworm's own python3.11 is 3.11.2."""
    target = rootfs / str(BASE).lstrip("/")
    for directory in ("bin", "lib"):
        (target / directory).mkdir(parents=True)
    shutil.copy2(BASE / "bin" / "python3.11", target / "bin" / "python3.11")
    for library in (BASE / "lib").glob("libpython3*.so*"):
        shutil.copy2(library, target / "lib" / library.name, follow_symlinks=False)
    shutil.copytree(BASE / "lib" / "python3.11", target / "lib" / "python3.11", symlinks=True, ignore=SKIPPED)
    shutil.copytree(BASE / "include", target / "include", symlinks=True)  # torch's inductor compiles against it
    (target / "lib" / "python3.11" / "site-packages").mkdir()


def interpreter_packages() -> list[str]:
    """The Debian packages holding the shared libraries the base interpreter and its extension modules link."""
    dynload = (BASE / "lib" / "python3.11" / "lib-dynload").glob("*.so")
    objects = [BASE / "bin" / "python3.11", *(so for so in dynload if not so.name.startswith("_tkinter"))]
    linked = set()
    for path in objects:
        ldd = subprocess.run(["ldd", str(path)], capture_output=True, text=True).stdout
        linked |= {lib for lib in re.findall(r"=> (/\S+)", ldd) if not lib.startswith(str(BASE))}
    packages = set()
    for lib in linked:
        candidates = {lib, os.path.realpath(lib), "/usr" + lib if lib.startswith("/lib") else lib}
        owner = subprocess.run(["dpkg", "-S", *candidates], capture_output=True, text=True).stdout
        packages |= {line.split(":")[0] for line in owner.splitlines() if ":" in line}
    return sorted(packages)


def install_package(rootfs: Path) -> None:
    """This checkout's package into the root filesystem's environment (not editable: a copy at /opt/nemotron)."""
    source = rootfs / SRC.lstrip("/")
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir(parents=True)
    for name in SOURCE:
        copy = shutil.copytree if (PROJECT_ROOT / name).is_dir() else shutil.copy2
        copy(PROJECT_ROOT / name, source / name, **({"ignore": CACHES} if copy is shutil.copytree else {}))
    inside(rootfs, [f"{PREFIX}/bin/pip", "install", "--no-deps", "--no-build-isolation", "--force-reinstall", SRC])
    shutil.rmtree(source)
    installed = source_digest(rootfs / SITE.lstrip("/") / PACKAGE_DIR.name)
    if installed != source_digest():
        raise RuntimeError(f"{rootfs}: the installed package digests {installed}, the checkout {source_digest()}")
    stamp = read_stamp(rootfs) | {"package": installed}
    (rootfs / STAMP).write_text(json.dumps(stamp))


def inside(rootfs: Path, command: list[str]) -> None:
    """Run a build command in the root filesystem (writable, with the network and this machine's pip settings,
    index directories and cache)."""
    argv = ["bwrap", "--bind", str(rootfs), "/", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    argv += ["--ro-bind", "/etc/resolv.conf", "/etc/resolv.conf"]
    for path in pip_settings():
        argv += ["--ro-bind", path, path]
    cache = subprocess.run([sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True).stdout
    if cache.strip():
        Path(cache.strip()).mkdir(parents=True, exist_ok=True)
        argv += ["--bind", cache.strip(), "/root/.cache/pip"]
    env = {k: v for k, v in os.environ.items() if k.startswith("PIP_")} | JOB_ENV | {"HOME": "/root"}
    subprocess.run([*argv, "--unshare-pid", "--die-with-parent", *command], env=env, check=True)


def pip_settings() -> list[str]:
    """This machine's pip configuration files and every local path they or the PIP_* variables name (indexes,
    wheel directories, constraints, certificates)."""
    debug = subprocess.run([sys.executable, "-m", "pip", "config", "debug"], capture_output=True, text=True).stdout
    files = re.findall(r"^\s+(\S+), exists: True", debug, re.M)
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    values = " ".join([listed, *(v for k, v in os.environ.items() if k.startswith("PIP_"))])
    named = re.findall(r"(?:file://)?(/[^\s'\"]+)", values)
    found = {Path(path) for path in [*files, *named] if Path(path).exists()}
    return sorted(str(path.parent if path.name == "simple" else path) for path in found)  # an index links ../files
