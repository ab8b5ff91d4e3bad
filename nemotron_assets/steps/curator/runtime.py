"""Running NeMo Curator pipelines in a step, and per-stage row counts read back from the tasks' own performance
records. The executor is Curator's RayDataExecutor on the run's one Ray cluster (ray_cluster), limited to the
step's CPUs, or, where Ray cannot pay for its fixed cost per pipeline, InProcessExecutor (`choose_executor`)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from nemotron_assets.digests import read_digest
from nemotron_assets.steps import StepRun
from nemotron_assets.steps.ray_cluster import cluster_address, connect

CPUS_VARIABLE = "NEMOTRON_CURATOR_RAY_NUM_CPUS"
MIN_CPUS = 2
READ_EXPANSION = 5  # a JSONL file read whole into a pandas DataFrame takes up to about this many times its size
# Ray Data pays ~4.6 s a pipeline (dataset, setup on every node, driver disconnect; bench/README.md "Curation
# throughput"), in which one core curates ~150 MB: below this input size a local run stays in process
IN_PROCESS_BYTES = 128 * 2**20
EXECUTORS = ("auto", "ray", "in_process")


def ray_cpus(run: StepRun, asked: int | None = None) -> int:
    """CPUs for Ray: `asked` (curate's `ray.num_cpus`), or $NEMOTRON_CURATOR_RAY_NUM_CPUS, else the profile's; never
    more than the profile's, never fewer than MIN_CPUS (Ray Data's repartition takes a whole CPU next to the stages)."""
    wanted = asked or os.environ.get(CPUS_VARIABLE) or run.cpus or MIN_CPUS
    if run.cpus is not None and int(wanted) > run.cpus:
        raise run.error("not_enough_cpu_resources", f"Ray asked for {wanted} CPUs, the profile has {run.cpus}")
    if int(wanted) < MIN_CPUS:
        raise run.error("not_enough_cpu_resources", f"{wanted} CPU for Ray; its data pipeline needs {MIN_CPUS}")
    return int(wanted)


def available_memory() -> int:
    """Bytes this machine can give the step now: MemAvailable, else the free physical pages."""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def check_file_memory(run: StepRun, files: Sequence[Path | str], error: str) -> None:
    """Curator's readers load one input file per task: the largest, times READ_EXPANSION, must fit in the memory
    available, else the step's `error`, before Ray starts."""
    sizes = {Path(f): Path(f).stat().st_size for f in files}
    largest = max(sizes, key=sizes.__getitem__)
    size, available = sizes[largest], available_memory()
    if size * READ_EXPANSION > available:
        raise run.error(
            error,
            f"{largest} is {size / 2**20:.1f} MiB, about {size * READ_EXPANSION / 2**20:.1f} MiB read whole "
            f"(x{READ_EXPANSION}); {available / 2**20:.1f} MiB of memory is available",
        )


def finish_shards(directory: Path) -> int:
    """The writer's shards, made location-independent: a blank one (an input file whose records were all filtered
    out) is removed, and each is renamed after its content (the writer names it by a hash of the input's absolute
    path, so the same data read from another store would get other names). Returns how many remain."""
    shards = sorted(directory.glob("*.jsonl"))
    for shard in shards:
        if shard.read_bytes().strip():
            shard.rename(directory / f"part-{read_digest(shard)[:16]}.jsonl")
        else:
            shard.unlink()
    return len(list(directory.glob("part-*.jsonl")))


def execution_stages(stages: Sequence[Any]) -> list[Any]:
    """Stages as the executor runs them: composite stages (readers, classifiers) decomposed."""
    from nemo_curator.stages.base import CompositeStage

    return [s for stage in stages for s in (stage.decompose() if isinstance(stage, CompositeStage) else [stage])]


def choose_executor(run: StepRun, stages: Sequence[Any], files: Sequence[Path | str], asked: str = "auto") -> str:
    """The executor for the (executed) stages over the input files: `asked` unless "auto", which is "ray" where the
    run attaches to a Ray cluster, a stage needs a GPU, or more than MIN_CPUS CPUs share an input over
    IN_PROCESS_BYTES, else "in_process" (Ray Data takes one of MIN_CPUS CPUs for its own repartitioning, so on two
    it runs the stages on one core too)."""
    if asked != "auto":
        return asked
    size = sum(Path(f).stat().st_size for f in files)
    many_cpus = (run.cpus or MIN_CPUS) > MIN_CPUS and size > IN_PROCESS_BYTES
    gpu = any(s.resources.requires_gpu for s in stages)
    return "ray" if cluster_address(run) is not None or gpu or many_cpus else "in_process"


def in_process_executor():
    """A Curator executor that runs the stages in this process, each source partition through every stage before the
    next (memory: one partition), each stage set up once and given batches of its `batch_size`, through Curator's
    own stage adapter (its performance records and task ids)."""
    from nemo_curator.backends.base import BaseExecutor, BaseStageAdapter, NodeInfo, WorkerMetadata
    from nemo_curator.tasks import EmptyTask

    class InProcessExecutor(BaseExecutor):
        def execute(self, stages, initial_tasks=None):
            for stage in stages:
                stage.setup_on_node(NodeInfo(), WorkerMetadata())
                stage.setup(WorkerMetadata())
            try:
                return through([BaseStageAdapter(s) for s in stages], initial_tasks or [EmptyTask()])
            finally:
                for stage in stages:
                    stage.teardown()

    def through(adapters, tasks):
        if not adapters:
            return tasks
        size = adapters[0].stage.batch_size or 1
        batches = (tasks[i : i + size] for i in range(0, len(tasks), size))
        return [out for batch in batches for out in through(adapters[1:], adapters[0].process_batch(batch))]

    return InProcessExecutor()


def run_pipeline(
    run: StepRun, name: str, stages: Sequence[Any], files: Sequence[Path | str], cpus: int | None = None,
    executor: str = "auto",
) -> tuple[dict[str, int], str]:  # fmt: skip
    """Run `stages` as one Curator Pipeline over the input `files` on the executor `choose_executor` picks; return
    the rows each stage received, by name, and the executor's name. `cpus`: the Ray CPUs asked for (ray_cpus).

    On Ray each stage asks for at most an equal share of the step's CPUs (ray_cpus), so an actor stage (a model
    filter) cannot hold every CPU while the stages after it wait for one."""
    from nemo_curator.backends.ray_data import RayDataExecutor
    from nemo_curator.pipeline import Pipeline

    flat = execution_stages(stages)
    executor = choose_executor(run, flat, files, executor)
    if executor == "in_process":
        tasks = Pipeline(name=name, stages=flat).run(in_process_executor())
    else:
        cpus = ray_cpus(run, cpus)
        share = cpus / len(flat)
        shared = [s.with_(resources=replace(s.resources, cpus=min(s.resources.cpus, share))) for s in flat]
        connect(run, cpus)  # the executor connects too, and disconnects when the pipeline ends
        tasks = Pipeline(name=name, stages=shared).run(RayDataExecutor())
    rows: Counter[str] = Counter()
    for task in tasks or []:
        for perf in task._stage_perf:
            rows[perf.stage_name] += perf.num_items_processed
    return dict(rows), executor
