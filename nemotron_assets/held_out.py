"""Evaluation is held out: no stage is scored on data it, or a model it came from, learned from.

Every quality-changing stage records in its provenance what it learned from (`trained_on`): for each data input,
its version, whether it read the whole artifact or only its train split, the versions upstream of it, and the
digests of the files it read. An evaluation walks its model's lineage (provenance inputs, transitively) to
collect those records and refuses, as training_data_used_for_evaluation, data that

- has a file the lineage trained on (by content digest), or
- is an artifact the lineage trained on, unless the evaluation reads its held-out split and training its train
  split (data_prep/split), or
- shares lineage with one: upstream of it (the data contains the training rows), downstream of it (derived from
  them, e.g. their translation), or both derived from a common artifact (e.g. two splits of one corpus).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nemotron_assets.artifacts.files import HELD_OUT, TRAIN, data_files, has_split, read_provenance
from nemotron_assets.catalog import StepSpec
from nemotron_assets.digests import file_digest
from nemotron_assets.errors import NamedError, contract_error
from nemotron_assets.pipelines.bookends import CHECKPOINTS
from nemotron_assets.steps import InputArtifact

TRAINED_ON = "trained_on"
WHOLE = "whole"
DATA_SUFFIXES = (".jsonl", ".parquet", ".bin")


def lineage(path: Path) -> Iterator[dict[str, Any]]:
    """The provenance of an artifact and of every artifact upstream of it (sources have none)."""
    pending, seen = [path], set()
    while pending:
        current = pending.pop()
        provenance = read_provenance(current) if current not in seen else None
        seen.add(current)
        if provenance is not None:
            yield provenance
            pending += [Path(record["path"]) for record in provenance.get("inputs", [])]


def ancestry(path: Path) -> set[str]:
    """The versions of every artifact upstream of `path` (partitions included)."""
    return {
        version
        for provenance in lineage(path)
        for record in provenance.get("inputs", [])
        for version in (record["version"], *record.get("partitions", {}).values())
    }


def data_digests(artifact: InputArtifact, split: str) -> dict[str, str]:
    """{digest: file} of an artifact's data files (of `split`, when it has splits)."""
    try:
        files = data_files(artifact.path, DATA_SUFFIXES, split)
    except NamedError:
        return {}
    return {file_digest(f): f"{artifact.name}/{f.name}" for f in files}


def trained_on(inputs: dict[str, InputArtifact]) -> list[dict[str, Any]]:
    """What a quality-changing stage learns from: each data input (checkpoints are the model, not its data)."""
    return [
        {
            "name": artifact.name,
            "version": artifact.version,
            "split": TRAIN if has_split(artifact.path, TRAIN) else WHOLE,
            "ancestors": sorted(ancestry(artifact.path)),
            "files": data_digests(artifact, TRAIN),
        }
        for artifact in inputs.values()
        if artifact.type not in CHECKPOINTS
    ]


def learned(inputs: dict[str, InputArtifact]) -> list[tuple[str, dict[str, Any]]]:
    """(asset key, trained_on record) for everything the consumed checkpoints' lineage learned from."""
    return [
        (provenance.get("asset_key", "?"), record)
        for artifact in inputs.values()
        if artifact.type in CHECKPOINTS
        for provenance in lineage(artifact.path)
        for record in provenance.get(TRAINED_ON, [])
    ]


def overlap(artifact: InputArtifact, record: dict[str, Any]) -> str | None:
    """Why evaluating on `artifact` would score what `record` was trained on, or None."""
    read = data_digests(artifact, HELD_OUT)
    shared = sorted(set(read) & set(record["files"]))
    if shared:
        return f"{read[shared[0]]} is a file it trained on"
    if artifact.version == record["version"]:
        split = has_split(artifact.path, HELD_OUT) and record["split"] == TRAIN
        return None if split else f"{artifact.name} is the data it trained on ({record['split']})"
    ancestors, upstream = ancestry(artifact.path), set(record["ancestors"])
    if artifact.version in upstream:
        return f"{artifact.name} is upstream of its training data {record['name']}"
    if record["version"] in ancestors:
        return f"{artifact.name} is derived from its training data {record['name']}"
    if ancestors & upstream:
        return f"{artifact.name} and its training data {record['name']} come from the same artifact"
    return None


def reject_trained_on(step: StepSpec, inputs: dict[str, InputArtifact]) -> None:
    """training_data_used_for_evaluation when an evaluation's data overlaps what its model's lineage learned."""
    if step.category != "eval":
        return
    for key, record in learned(inputs):
        for artifact in inputs.values():
            if artifact.type not in CHECKPOINTS and (why := overlap(artifact, record)):
                raise contract_error("training_data_used_for_evaluation", f"{why}: {key} learned from it")
