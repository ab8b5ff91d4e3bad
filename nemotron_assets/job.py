"""The one entry point of a launched job, on every executor and inside every image:

    python -m nemotron_assets.job /path/in/the/job/to/job.json

The job spec (written by the launching step onto the profile's storage, every path in it a path of the job's own
filesystem) names the backend that does the work. With several processes per node (or a backend that needs
torchrun's process group) the entry point re-runs itself under torchrun with the job's own interpreter.
Before any work the job checks that its image carries the package source the spec was written from. A failure is
written to the spec's failure file (`oom`, a named error of the step, or `error`) so the launching step can name
it, whichever executor ran the job. Logs and progress go to the Dagster run through Pipes (its bootstrap variables
are in the environment, set by the launcher).

This module imports nothing beyond the standard library and pydantic at import: a job image needs only the
backend's library, this package and dagster-pipes.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

PACKAGE_DIR = Path(__file__).resolve().parent
# backend -> the module whose `run(spec)` does the work, inside the job
BACKENDS = {
    "automodel": "nemotron_assets.steps.automodel.job",
    "megatron_bridge.train": "nemotron_assets.steps.megatron_bridge.train_job",
    "megatron_bridge.convert": "nemotron_assets.steps.megatron_bridge.convert_job",
    "modelopt": "nemotron_assets.steps.modelopt.job",
    "lm_eval": "nemotron_assets.steps.evaluation.lm_eval_job",
    "nemo_rl": "nemotron_assets.steps.nemo_rl.job",
    "peft": "nemotron_assets.steps.peft.job",
}
JOB_PYTHON = "python"  # the image's own interpreter, found on the job's PATH
MISSING_PACKAGE_EXIT = 86  # the image has no nemotron_assets, or another version of it
PEAK_GPU_MEMORY = "peak_gpu_memory_gb"  # the key of the Pipes custom message a training job reports its peak in


class JobSpec(BaseModel):
    """What one launched job does; written by the step, read by the job. Paths are the job's own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    step: str = Field(description="catalog step id")
    backend: str = Field(description=f"one of {sorted(BACKENDS)}")
    args: dict[str, Any] = Field(description="the backend's arguments, paths already in the job's filesystem")
    work_dir: str = Field(description="the stage's work directory (checkpoints, reports), on the storage")
    failure_file: str = Field(description="where the job records what failed")
    nproc_per_node: int = Field(default=1, ge=1)
    nnodes: int = Field(default=1, ge=1)
    torchrun: bool = Field(default=False, description="run under torchrun even with one process")
    source_digest: str = Field(description="digest of the package source that wrote the spec (source_digest())")


def source_digest(package_dir: Path = PACKAGE_DIR) -> str:
    """Digest of this package's code and data (.py, .toml, .yaml, .jinja): equal on the host and in a job image
    built from the same checkout."""
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*")):
        if path.suffix in {".py", ".toml", ".yaml", ".jinja"} and "__pycache__" not in path.parts:
            digest.update(path.relative_to(package_dir).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def command(spec_path: str) -> list[str]:
    """The command of every job, on every executor: the image's Python, this module, the spec."""
    return [JOB_PYTHON, "-m", "nemotron_assets.job", spec_path]


class JobError(Exception):
    """A failure the backend can name (one of the step's named errors): recorded under that name."""

    def __init__(self, name: str, detail: str):
        super().__init__(f"{name}: {detail}")
        self.name, self.detail = name, detail


def record_failure(spec: JobSpec, kind: str, detail: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0 or kind == "oom":
        Path(spec.failure_file).write_text(json.dumps({"error": kind, "detail": detail[-2000:]}))


def peak_gpu_memory_gb() -> float | None:
    """torch.cuda.max_memory_allocated() of this process in GiB, the max over all ranks while a process group is up
    (a collective then: every rank calls it); None without CUDA, so a CPU job reports no figure."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    peak = torch.tensor([float(torch.cuda.max_memory_allocated())], device="cuda")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(peak, op=torch.distributed.ReduceOp.MAX)
    return round(peak.item() / 2**30, 3)


def report_peak_gpu_memory(pipes: Any) -> None:
    """Report the job's peak GPU memory as a Pipes custom message; call it on every rank (`pipes` is None on the
    ranks that do not report), and nothing is reported without CUDA."""
    peak = peak_gpu_memory_gb()
    if pipes is not None and peak is not None:
        pipes.report_custom_message({PEAK_GPU_MEMORY: peak})


def torchrun_argv(spec: JobSpec, spec_path: str) -> list[str]:
    """torchrun over this node's processes; several nodes rendezvous at MASTER_ADDR (set by the executor, or the
    first node of a Slurm allocation)."""
    argv = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={spec.nproc_per_node}"]
    if spec.nnodes > 1:
        master = os.environ.get("MASTER_ADDR") or os.environ.get("SLURM_LAUNCH_NODE_IPADDR", "localhost")
        argv += [f"--nnodes={spec.nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={master}:29500"]
    return [*argv, "-m", "nemotron_assets.job", spec_path]


def main(argv: list[str] | None = None) -> None:
    (spec_path,) = argv if argv is not None else sys.argv[1:]
    spec = JobSpec.model_validate_json(Path(spec_path).read_text())
    if source_digest() != spec.source_digest:
        detail = f"the job's nemotron_assets is {source_digest()}, the spec was written by {spec.source_digest}"
        record_failure(spec, "job_image_stale", detail)
        print(f"job_image_stale: {detail}", file=sys.stderr)
        raise SystemExit(MISSING_PACKAGE_EXIT)
    if (spec.torchrun or spec.nproc_per_node > 1 or spec.nnodes > 1) and "LOCAL_RANK" not in os.environ:
        os.execv(sys.executable, torchrun_argv(spec, spec_path))
    backend = importlib.import_module(BACKENDS[spec.backend])
    try:
        backend.run(spec)
    except JobError as e:
        record_failure(spec, e.name, e.detail)
        raise SystemExit(3) from e
    except Exception as e:
        oom = type(e).__name__ == "OutOfMemoryError"  # torch's, without importing torch here
        record_failure(spec, "oom" if oom else "error", f"{type(e).__name__}: {e}")
        raise


if __name__ == "__main__":  # run the importable module's main, so that backends raise the JobError it catches
    from nemotron_assets.job import main as job_main

    job_main()
