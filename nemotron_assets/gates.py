"""Quality gates: the evaluations on both sides of a quality-changing stage, compared metric by metric.

Training (sft, peft, pretrain, rl) must not regress beyond the tolerance; conversions must reproduce every score
within it (epsilon); optimization may lose at most the tolerance (max_drop). Scores taken with different
settings are not comparable, which fails the gate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING

from nemotron_assets.artifacts.files import read_provenance
from nemotron_assets.catalog import CATALOG

if TYPE_CHECKING:
    from collections.abc import Sequence

    from resources.artifact_store import ArtifactStore

DEFAULT_TOLERANCE = {"sft": 0.01, "peft": 0.01, "pretrain": 0.01, "rl": 0.01, "convert": 0.001, "optimize": 0.02}
QUALITY_CATEGORIES = CATALOG.rules.bookends.categories  # the catalog categories whose stages change model quality
MUST_MATCH = ("convert",)


@dataclass(frozen=True)
class Comparison:
    metric: str
    before: float
    after: float
    improvement: float  # positive = better, whatever the metric's direction
    passed: bool


def compare(before: Path, after: Path, category: str, tolerance: float) -> tuple[bool, list[Comparison], str]:
    """(passed, per-metric comparisons, reason) for two eval_results directories."""
    settings = [json.loads((p / "settings.json").read_text()) for p in (before, after)]
    if settings[0] != settings[1]:
        changed = sorted(k for k in settings[0].keys() | settings[1].keys() if settings[0].get(k) != settings[1].get(k))
        return False, [], f"not comparable: settings differ in {changed}"
    results = [json.loads((p / "results.json").read_text()) for p in (before, after)]
    rows = []
    for task, metrics in results[0]["scores"].items():
        for metric, old in metrics.items():
            new = results[1]["scores"][task][metric]
            better = (new - old) if results[0]["higher_is_better"][task][metric] else (old - new)
            ok = abs(new - old) <= tolerance if category in MUST_MATCH else better >= -tolerance
            rows.append(Comparison(f"{task}/{metric}", old, new, better, ok))
    failed = [r.metric for r in rows if not r.passed]
    rule = "must match within" if category in MUST_MATCH else "may not get worse by more than"
    reason = (
        f"{failed} {rule} {tolerance}" if failed else f"every score {rule.replace('may not', 'did not')} {tolerance}"
    )
    return not failed, rows, reason


def scored_version(after: Path, name: str) -> str:
    """The version of checkpoint `name` the evaluation at `after` scored: one of its inputs, or an input of the
    export it scored (a Megatron checkpoint is scored through its HF export)."""
    inputs = read_provenance(after)["inputs"]
    exported = [(read_provenance(Path(i["path"])) or {}).get("inputs", []) for i in inputs if "path" in i]
    return next(i["version"] for i in chain(inputs, *exported) if i["name"] == name)


def comparison_table(rows: Sequence[Comparison]) -> str:
    """The comparisons as a markdown table (the gate check's metadata and the model card show the same one)."""
    return "| metric | before | after | improvement | ok |\n|---|---:|---:|---:|---|\n" + "\n".join(
        f"| {r.metric} | {r.before:.4g} | {r.after:.4g} | {r.improvement:+.4g} | {'yes' if r.passed else 'NO'} |"
        for r in rows
    )


GATES = ".gates"  # <artifact>/.gates/<decision>.json: each decision of the artifact's quality gate, once


def settle(
    store: ArtifactStore, key: Sequence[str], before: Path, after: Path, passed: bool, tolerance: float
) -> str | None:
    """Promotion by a gate, decided once per (scored version, before and after evaluations, tolerance): passing
    marks the checkpoint version the after-evaluation scored PROMOTED; failing puts CURRENT back on the PROMOTED
    version (withdraws it before any pass) if CURRENT still is the scored version, so consumers never read a
    regressed checkpoint and its files stay for inspection. The decision is recorded; re-running the check with the
    same inputs finds it and moves nothing (a newer version's pointers are never touched by an old decision).
    Returns the version consumers read now."""
    from nemotron_assets.digests import json_digest
    from resources.artifact_store import PROMOTED

    scored = scored_version(after, key[-1])
    evaluations = [read_provenance(p)["version"] for p in (before, after)]
    decision = {"scored": scored, "evaluations": evaluations, "tolerance": tolerance, "passed": passed}
    record = store.artifact_dir(key) / GATES / f"{json_digest(decision)[:16]}.json"
    if not record.exists():
        if passed:
            store.set_current(key, scored, PROMOTED)
        elif (current := store.current(key)) is None or current[0] == scored:
            good = store.current(key, PROMOTED)
            store.set_current(key, good[0]) if good else store.withdraw(key)
        record.parent.mkdir(exist_ok=True)
        record.write_text(json.dumps(decision, indent=1))
    current = store.current(key)
    return current[0] if current else None


def failed_gate(artifact: Path, version: str) -> dict | None:
    """A failed gate decision recorded for `version` of the artifact at `artifact`, when none passed it."""
    records = sorted((artifact / GATES).glob("*.json"))
    decisions = [d for d in (json.loads(r.read_text()) for r in records) if d["scored"] == version]
    if any(d["passed"] for d in decisions):
        return None
    return decisions[0] if decisions else None
