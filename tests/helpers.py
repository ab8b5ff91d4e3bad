"""Test helpers: small pipelines over the shipped fixtures, run through the real stage runner."""

from __future__ import annotations

import ast
import importlib.util
import json
import shutil
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import dagster as dg

from nemotron_assets.execution import Materialization, run_stage
from nemotron_assets.factory import pipeline_assets
from nemotron_assets.job import JobSpec
from nemotron_assets.pipelines import PipelineSpec
from resources.artifact_store import ArtifactStore
from resources.profile import HardwareProfile

STEP_INPUT = {
    "data_prep/sft_packing": "training_jsonl",
    "data_prep/pretrain_prep": "filtered_jsonl",
    "data_prep/rl_prep": "training_jsonl",
    "data_prep/split": "training_jsonl",
    "sft/automodel": "training_jsonl",
    "peft/automodel": "training_jsonl",
    "curate/nemo_curator": "raw_jsonl",
    "translate/nemo_curator": "filtered_jsonl",
}


def one_stage_pipeline(step: str, source: Path | str, source_type: str | None = None, **config: Any) -> PipelineSpec:
    """A pipeline `t`: one source `data` feeding one stage `out` of `step` (tiny preset)."""
    port = STEP_INPUT[step]
    return PipelineSpec.parse(
        {
            "name": "t",
            "description": "test",
            "sources": [{"name": "data", "type": source_type or port, "path": str(source)}],
            "stages": [{"name": "out", "step": step, "consumes": {port: "data"}, "preset": "tiny", "config": config}],
        }
    )


def materialize(
    pipeline: PipelineSpec,
    store: ArtifactStore,
    stage: str = "out",
    cpus: int | None = None,
    nodes: int = 1,
    **overrides: Any,
) -> Materialization:
    spec = pipeline.stage(stage)
    return run_stage(pipeline, spec, pipeline.params(spec) | overrides, store, "local_cpu", cpus=cpus, nodes=nodes)


def published(store: ArtifactStore, key: tuple[str, ...] = ("t", "out")) -> list[str]:
    """Everything in an asset's store directory: versions, staging leftovers, the CURRENT pointer."""
    directory = store.artifact_dir(key)
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def materialize_in_dagster(
    pipeline: PipelineSpec, root: Path, profile: str = "local_cpu", instance: dg.DagsterInstance | None = None
) -> dg.ExecuteInProcessResult:
    """Every asset of `pipeline`, materialized in process by Dagster into a store at `root` on `profile`."""
    return dg.materialize(
        pipeline_assets(pipeline),
        resources={"artifact_store": ArtifactStore(root=str(root)), "hardware": HardwareProfile(name=profile)},
        selection=dg.AssetSelection.groups(pipeline.name),
        instance=instance,
        raise_on_error=False,
    )


def job_spec(command: list[str]) -> JobSpec:
    """The job spec a launched command runs: every executor runs `python -m nemotron_assets.job <spec>`."""
    assert command[:3] == ["python", "-m", "nemotron_assets.job"], command
    return JobSpec.model_validate_json(Path(command[3]).read_text())


@cache
def syntax_tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def module_file(module: str) -> Path:
    return Path(importlib.util.find_spec(module).origin)


def import_closure(paths: Iterable[Path], within: str) -> list[Path]:
    """The files and the modules under `within` (a dotted prefix) they import with `from ... import`, transitively."""
    seen: set[Path] = set()
    todo = list(paths)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(syntax_tree(path)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(within):
                todo.append(module_file(node.module))
    return sorted(seen)


def another_tokenizer(tiny_bpe: Path, target: Path) -> Path:
    """A copy of the tiny BPE tokenizer less its last merge: the same vocabulary, another tokenizer."""
    other = Path(shutil.copytree(tiny_bpe, target))
    tokenizer = json.loads((other / "tokenizer.json").read_text())
    tokenizer["model"]["merges"] = tokenizer["model"]["merges"][:-1]
    (other / "tokenizer.json").write_text(json.dumps(tokenizer))
    return other
