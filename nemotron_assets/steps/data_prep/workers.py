"""Whole row shards tokenized by independent workers, each with its own tokenizer: in this process (one CPU, or one
shard; its encoder's threads capped at the profile's CPUs), in a local process pool (one worker per profile CPU), or
as Ray tasks (several nodes, or a Ray cluster's address).

A shard's work is a top-level function `work(tokenizer, spec, *job) -> result`; `spec` is a picklable description
with the tokenizer's `tokenizer` name. Results come back in job order, so whatever merges them sees the same list
for any number of workers. The first failing shard's error is raised as in one process; later shards are cancelled.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from functools import cache
from typing import Any, TypeVar

from nemotron_assets.steps import StepRun
from nemotron_assets.steps.data_prep.tokenizer import Tokenizer, load_tokenizer
from nemotron_assets.steps.launch import scoped_environ

R = TypeVar("R")
Work = Callable[..., R]

worker_tokenizer = cache(load_tokenizer)  # one per worker process, loaded for its first shard


def in_worker(work: Work, spec: Any, *job: Any) -> R:
    return work(worker_tokenizer(spec.tokenizer), spec, *job)


def limit_encode_threads(threads: int) -> None:
    """Worker initializer: the Rust encoder's thread pool gets this process's share of the CPUs."""
    os.environ["RAYON_NUM_THREADS"] = str(threads)


@contextmanager
def encode_threads(threads: int | None) -> Iterator[None]:
    """This process's Rust encoder held to `threads` inside the block (None, CPUs unknown: unchanged).

    RAYON_NUM_THREADS sizes the encoder's pool when the pool starts (at the process's first parallel encode); with
    one thread TOKENIZERS_PARALLELISM=false, read at every call, encodes in the calling thread, so no pool starts
    and one started earlier stays idle. The variables are restored afterwards."""
    if threads is None:
        yield
        return
    limits = {"RAYON_NUM_THREADS": str(threads)} | ({"TOKENIZERS_PARALLELISM": "false"} if threads == 1 else {})
    with scoped_environ(limits):
        yield


def uses_ray(run: StepRun) -> bool:
    """Shards go to Ray when the profile spans several nodes or names a Ray cluster to attach to."""
    from nemotron_assets.steps.ray_cluster import cluster_address

    return run.nodes > 1 or cluster_address(run) is not None


def map_shards(run: StepRun, work: Work, spec: Any, tokenizer: Tokenizer, jobs: Sequence[tuple]) -> list[R]:
    """`work(tokenizer, spec, *job)` for every job, in job order, on the workers the profile gives (see above)."""
    if uses_ray(run):
        return _on_ray(run, work, spec, jobs)
    workers = min(run.cpus or 1, len(jobs))
    if workers <= 1:
        with encode_threads(run.cpus):
            return [work(tokenizer, spec, *job) for job in jobs]
    context, threads = multiprocessing.get_context("spawn"), max(1, run.cpus // workers)
    with ProcessPoolExecutor(workers, context, initializer=limit_encode_threads, initargs=(threads,)) as pool:
        futures = [pool.submit(in_worker, work, spec, *job) for job in jobs]
        try:
            return [future.result() for future in futures]
        finally:
            pool.shutdown(cancel_futures=True)


def _on_ray(run: StepRun, work: Work, spec: Any, jobs: Sequence[tuple]) -> list[R]:
    """One Ray task of one CPU per shard on the run's Ray cluster (ray_cluster.connect); disconnects afterwards."""
    import ray

    from nemotron_assets.steps.ray_cluster import connect

    connect(run, run.cpus or 1)
    task = ray.remote(num_cpus=1, max_retries=0)(in_worker).options(
        runtime_env={"env_vars": {"RAYON_NUM_THREADS": "1"}}
    )
    refs = [task.remote(work, spec, *job) for job in jobs]
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as e:
        for ref in refs:
            ray.cancel(ref)
        raise e.cause from None
    finally:
        ray.shutdown()
