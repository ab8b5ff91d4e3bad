"""Running one pipeline stage: resolve inputs, version, reuse or build, validate, seal, publish.

The data version of an artifact is a content hash of everything that determines it: the step and its code
version, the resolved parameters (a parameter naming a local path, such as a tokenizer or base-model directory,
by its content), and the data versions of its inputs. An artifact with that version already in the store
is reused, so an unchanged input is never recomputed, and a tokenizer change makes packed data stale.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

from nemotron_assets.artifacts import check_type, validate
from nemotron_assets.artifacts.files import read_provenance, sniff_type
from nemotron_assets.catalog import CATALOG, StepSpec
from nemotron_assets.digests import content_digest, json_digest
from nemotron_assets.errors import contract_error, step_error
from nemotron_assets.gates import QUALITY_CATEGORIES
from nemotron_assets.held_out import TRAINED_ON, reject_trained_on, trained_on
from nemotron_assets.model_card import card_type, write_card
from nemotron_assets.paths import PROJECT_ROOT, expand
from nemotron_assets.pipelines import PipelineSpec, Stage
from nemotron_assets.steps import InputArtifact, StepRun, step_function
from nemotron_assets.steps.launch import LOCAL, Launcher, Measured, PathMap
from nemotron_assets.tracking import WANDB_DIR, TrackedRun, Tracker, WandbTracker
from nemotron_assets.usage import metered, usage
from nemotron_assets.versions import step_code_version
from resources.artifact_store import WORK, ArtifactStore, seal, write_provenance


@dataclass(frozen=True)
class Materialization:
    path: Path
    version: str
    reused: bool
    provenance: dict[str, Any]

    @property
    def stats(self) -> dict[str, Any]:
        return self.provenance["stats"]


def expand_params(params: dict[str, Any]) -> dict[str, Any]:
    return {k: expand(v) if isinstance(v, str) else v for k, v in params.items()}


def store_key(pipeline: PipelineSpec, name: str, partition: str | None) -> tuple[str, ...]:
    """An artifact's key in the store: `<pipeline>/<artifact>`, plus the partition key for a partitioned one."""
    return (pipeline.name, name, partition) if pipeline.partitions_of(name) else (pipeline.name, name)


def resolve_input(
    pipeline: PipelineSpec, name: str, store: ArtifactStore, partition: str | None = None
) -> InputArtifact:
    """A source's path and content digest, or a stage output's current published version; for a partitioned
    artifact, the consumer's partition of it, or all its partitions when the consumer is unpartitioned."""
    type_name = pipeline.artifact_type(name)
    source = pipeline.source(name)
    if pipeline.partitions_of(name) and partition is None:
        return all_partitions(pipeline, name, store)
    if source is not None:
        try:
            path = Path(expand(source.path))
        except KeyError as e:
            raise contract_error("artifact_missing", f"source {pipeline.name}/{name}: {e.args[0]}; set it") from None
        path = path / partition if source.partitioned else path
        if not path.exists() and not any(ch in str(path) for ch in "*?["):
            raise contract_error("artifact_missing", f"source {pipeline.name}/{name}: {path} does not exist")
        return InputArtifact(name, type_name, path, content_digest(path))
    key = store_key(pipeline, name, partition)
    current = store.current(key)
    if current is None:
        raise contract_error("artifact_missing", f"{'/'.join(key)} has not been materialized yet")
    version, path = current
    return InputArtifact(name, type_name, path, version)


def all_partitions(pipeline: PipelineSpec, name: str, store: ArtifactStore) -> InputArtifact:
    """Every published partition of a partitioned stage output, as one input versioned by all of them."""
    type_name = pipeline.artifact_type(name)
    directory = store.artifact_dir((pipeline.name, name))
    keys = sorted(p.name for p in directory.iterdir() if p.is_dir()) if directory.is_dir() else []
    parts = tuple(
        InputArtifact(key, type_name, current[1], current[0])
        for key in keys
        if (current := store.current((pipeline.name, name, key))) is not None
    )
    if not parts:
        raise contract_error("artifact_missing", f"{pipeline.name}/{name}: no partition has been materialized yet")
    versions = {part.name: part.version for part in parts}
    return InputArtifact(name, type_name, directory, json_digest(versions)[:16], parts)


def check_input(step: StepSpec, port: str, artifact: InputArtifact) -> None:
    """An input the step may read, of the port's type: its files are sniffed once for all three checks."""
    found = sniff_type(artifact.path)
    reject_held_out(step, artifact, found)
    reject_fed(step, artifact, found)
    check_type(artifact.path, port, found)


def reject_fed(step: StepSpec, artifact: InputArtifact, found: str | None) -> None:
    """The step's own named error when it is fed an artifact type it declares it cannot take."""
    for error in step.errors:
        if found and error.fed and CATALOG.is_a(found, error.fed):
            raise step_error(step.id, error.name, f"{artifact.name} at {artifact.path} is {found}")


BENCHMARK = "benchmark_parquet"
BENCHMARK_READERS = frozenset({"eval", "byob"})


def reject_held_out(step: StepSpec, artifact: InputArtifact, found: str | None) -> None:
    """Benchmarks are held-out evaluation data: only evaluation and BYOB steps may read one, whatever type the
    pipeline declares for it (a published benchmark is recognised by its recorded type)."""
    benchmark = CATALOG.is_a(artifact.type, BENCHMARK) or (found in CATALOG.types and CATALOG.is_a(found, BENCHMARK))
    if benchmark and step.category not in BENCHMARK_READERS:
        raise contract_error("held_out_benchmark_in_training", f"{step.id} was fed {artifact.name} ({artifact.path})")


def local_path_digests(params: dict[str, Any]) -> dict[str, str]:
    """Content digests of parameters that name local files or directories."""
    return {
        k: content_digest(Path(v)) for k, v in params.items() if isinstance(v, str) and os.sep in v and Path(v).exists()
    }


def data_version(step: StepSpec, params: dict[str, Any], inputs: dict[str, InputArtifact]) -> str:
    """Content hash of what determines the artifact (parameters that cannot change it left out); a local path
    counts by its content, not its location."""
    params = {k: v for k, v in params.items() if step.parameter(k).versioned}
    digests = local_path_digests(params)
    return json_digest(
        {
            "step": step.id,
            "code_version": step_code_version(step.id),
            "params": {k: {"content": digests[k]} if k in digests else v for k, v in params.items()},
            "inputs": {port: artifact.version for port, artifact in sorted(inputs.items())},
        }
    )[:16]


def code_identity() -> dict[str, Any]:
    """Package version and, in a git checkout, the commit and whether the tree is dirty."""
    identity: dict[str, Any] = {"package": package_version("nemotron-assets")}

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        identity["commit"] = git("rev-parse", "HEAD")
        identity["dirty"] = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        pass
    return identity


def stage_version(
    pipeline: PipelineSpec, stage: Stage, params: dict[str, Any], store: ArtifactStore, partition: str | None = None
) -> tuple[dict[str, Any], dict[str, InputArtifact], str]:
    """What reuse is decided on, before any work: the checked parameters (expanded), the resolved and checked
    inputs, and the data version they make."""
    step = CATALOG.step(stage.step)
    if step.entry is None:
        raise contract_error("step_not_runnable", f"{pipeline.name}/{stage.name}: {step.id}")
    try:
        step.typed_params(params)
    except ValueError as e:
        raise contract_error("invalid_parameter", f"{pipeline.name}/{stage.name}: {e}") from None
    params = expand_params(params)
    inputs = {port: resolve_input(pipeline, name, store, partition) for port, name in stage.consumes.items()}
    for port, artifact in inputs.items():
        for part in artifact.parts or (artifact,):
            check_input(step, port, part)
    reject_trained_on(step, inputs)
    return params, inputs, data_version(step, params, inputs)


def tracked_run(
    tracker: Tracker, key: tuple[str, ...], version: str, run_id: str | None, store: ArtifactStore
) -> TrackedRun:
    """The tracker run of one build: named by the asset key, tagged with it, the data version and the Dagster run."""
    name = "/".join(key)
    tags = {"nemotron.asset_key": name, "nemotron.data_version": version}
    tags |= {"dagster.run_id": run_id} if run_id else {}
    own = isinstance(tracker, WandbTracker) and tracker.dir
    directory = Path(tracker.dir) if own else store.base / WANDB_DIR
    return TrackedRun(tracker, name, tags, version, directory)


def run_stage(
    pipeline: PipelineSpec,
    stage: Stage,
    params: dict[str, Any],
    store: ArtifactStore,
    profile: str,
    run_id: str | None = None,
    log: logging.Logger | None = None,
    launcher: Launcher | None = None,
    gpus: int = 0,
    partition: str | None = None,
    cpus: int | None = None,
    paths: PathMap = LOCAL,
    nodes: int = 1,
    executor: str = "local",
    gpu_hour_price: float | None = None,
    ray_address: str | None = None,
    tracker: Tracker | None = None,
) -> Materialization:
    """Materialize one stage into the store, or reuse the artifact its inputs and parameters already made."""
    step = CATALOG.step(stage.step)
    params, inputs, version = stage_version(pipeline, stage, params, store, partition)
    key = store_key(pipeline, stage.name, partition)
    existing = store.version_dir(key, version)
    published = read_provenance(existing)
    work_dir = store.artifact_dir(key) / WORK / version  # steps that need it create it; kept across attempts
    if published is not None:
        shutil.rmtree(work_dir, ignore_errors=True)  # left by a run killed between publishing and cleaning up
        store.set_current(key, version)
        return Materialization(existing, version, True, published)

    def build(staging: Path) -> dict[str, Any]:
        started = time.time()
        logger = log or logging.getLogger(step.id)
        launches: list[Measured] = []
        run = StepRun(
            step,
            params,
            inputs,
            staging,
            work_dir,
            gpus,
            logger,
            launcher and metered(launcher, launches),
            cpus,
            profile=profile,
            paths=paths,
            nodes=nodes,
            ray_address=ray_address,
            tracking=tracked_run(tracker, key, version, run_id, store) if tracker else None,
        )
        result = step_function(step)(run)
        provenance = {
            "type": step.primary_output,
            "asset_key": "/".join(key),
            "version": version,
            "step": {"id": step.id, "code_version": step_code_version(step.id), "preset": stage.preset},
            "params": params,
            "inputs": [
                {"port": port, "name": a.name, "type": a.type, "path": str(a.path), "version": a.version}
                | ({"partitions": {part.name: part.version for part in a.parts}} if a.parts else {})
                for port, a in sorted(inputs.items())
            ],
            "code": code_identity(),
            **({TRAINED_ON: trained_on(inputs)} if step.category in QUALITY_CATEGORIES else {}),
            "profile": profile,
            "run_id": run_id,
            "plots": result.plots,
            **result.provenance,
        }
        write_provenance(staging, provenance)  # the contract reads it (e.g. pack_size)
        stepped = time.time()
        provenance["stats"] = result.stats
        if card_type(step.primary_output):
            write_card(staging, provenance)
        provenance["contract"] = validate(staging, step.primary_output)
        provenance["timings"] = {
            "started_at": datetime.fromtimestamp(started, UTC).isoformat(),
            "step_seconds": round(stepped - started, 3),
            "validate_seconds": round(time.time() - stepped, 3),
        }
        provenance["usage"] = usage(stepped - started, gpus * nodes, executor, result.stats, gpu_hour_price, launches)
        return seal(staging, provenance)

    path, provenance = store.publish(key, version, build)
    shutil.rmtree(work_dir, ignore_errors=True)
    return Materialization(path, version, False, provenance)
