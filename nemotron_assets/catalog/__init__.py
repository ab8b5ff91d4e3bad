"""The step catalog as data: artifact types (is_a / convert_to lattice), step specs and the planner's selection
rules, validated at import."""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nemotron_assets.catalog.models import ArtifactType, Parameter, Port, Rules, StepSpec

__all__ = ["CATALOG", "ArtifactType", "Catalog", "CatalogError", "Parameter", "Port", "StepSpec", "load_catalog"]

CATALOG_DIR = Path(__file__).parent


class CatalogError(ValueError):
    """The catalog files are inconsistent."""


@dataclass(frozen=True)
class Catalog:
    types: dict[str, ArtifactType]
    steps: dict[str, StepSpec]
    contract_errors: dict[str, str]
    rules: Rules

    def ancestors(self, type_name: str) -> list[str]:
        """Every type `type_name` is_a, transitively, nearest first."""
        seen: list[str] = []
        frontier = list(self.types[type_name].is_a)
        while frontier:
            parent = frontier.pop(0)
            if parent not in seen:
                seen.append(parent)
                frontier.extend(self.types[parent].is_a)
        return seen

    def is_a(self, type_name: str, target: str) -> bool:
        return type_name == target or target in self.ancestors(type_name)

    def step(self, step_id: str) -> StepSpec:
        if step_id in self.steps:
            return self.steps[step_id]
        close = difflib.get_close_matches(step_id, list(self.steps), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown step {step_id!r}{hint}")

    def find_steps(
        self, category: str | None = None, consumes: str | None = None, produces: str | None = None
    ) -> list[StepSpec]:
        """Steps filtered by category, by an artifact you have (consumes) and one you need (produces)."""
        return [
            step
            for step in self.steps.values()
            if (category is None or step.category == category)
            and (consumes is None or any(self.is_a(consumes, p.type) for p in step.consumes))
            and (produces is None or any(self.is_a(p.type, produces) for p in step.produces))
        ]

    def types_json(self) -> dict[str, Any]:
        return {
            name: {
                "description": t.description,
                "kind": t.kind,
                "is_a": self.ancestors(name),
                "convert_to": dict(t.convert_to),
            }
            for name, t in self.types.items()
        }


def _read(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        return tomllib.load(f)


def load_catalog(directory: Path = CATALOG_DIR) -> Catalog:
    """Load and cross-validate types.toml, errors.toml, rules.toml and steps/**/*.toml."""
    types = {name: ArtifactType(name=name, **body) for name, body in _read(directory / "types.toml")["types"].items()}
    contract_errors = {name: body["recovery"] for name, body in _read(directory / "errors.toml")["errors"].items()}
    steps: dict[str, StepSpec] = {}
    for path in sorted((directory / "steps").rglob("*.toml")):
        step = StepSpec(**_read(path))
        if step.id in steps:
            raise CatalogError(f"duplicate step id {step.id!r} in {path}")
        steps[step.id] = step
    rules = Rules(**_read(directory / "rules.toml"))
    catalog = Catalog(types=types, steps=steps, contract_errors=contract_errors, rules=rules)
    _validate(catalog)
    _validate_rules(catalog)
    return catalog


def _validate(catalog: Catalog) -> None:
    types, steps = catalog.types, catalog.steps
    for t in types.values():
        for parent in t.is_a:
            if parent not in types:
                raise CatalogError(f"type {t.name}: is_a unknown type {parent!r}")
    for t in types.values():
        if t.name in catalog.ancestors(t.name):
            raise CatalogError(f"type {t.name}: is_a cycle")
    for step in steps.values():
        for port in (*step.consumes, *step.produces):
            if port.type not in types:
                raise CatalogError(f"step {step.id}: unknown artifact type {port.type!r}")
        for error in step.errors:
            if error.fed is not None and error.fed not in types:
                raise CatalogError(f"step {step.id}: error {error.name} is fed unknown type {error.fed!r}")
    for t in types.values():
        for target, converter_id in t.convert_to.items():
            if target not in types:
                raise CatalogError(f"type {t.name}: convert_to unknown type {target!r}")
            converter = steps.get(converter_id)
            if converter is None:
                raise CatalogError(f"type {t.name}: converter step {converter_id!r} does not exist")
            if not any(catalog.is_a(t.name, p.type) for p in converter.consumes):
                raise CatalogError(f"converter {converter_id} does not consume {t.name}")
            if not any(catalog.is_a(p.type, target) for p in converter.produces):
                raise CatalogError(f"converter {converter_id} does not produce {target}")


def _validate_rules(catalog: Catalog) -> None:
    """Every step, type, task, error and category a rule names exists."""
    rules, steps = catalog.rules, catalog.steps
    tasks = {task for route in rules.route for task in route.tasks}
    names = {error.name for step in steps.values() for error in step.errors} | set(catalog.contract_errors)
    for task in tasks:
        if rules.routes(task)[-1].when:
            raise CatalogError(f"rule {rules.routes(task)[-1].id}: the last route of task {task} must always hold")
    for route in rules.route:
        if route.use is not None and route.use not in steps and route.use not in tasks:
            raise CatalogError(f"rule {route.id}: uses {route.use!r}, neither a step nor a routed task")
        if route.block is not None and route.block not in names:
            raise CatalogError(f"rule {route.id}: blocks with {route.block!r}, which no step or errors.toml declares")
    for intent in rules.intent:
        for step in intent.steps:
            if step not in steps:
                raise CatalogError(f"rule {intent.id}: unknown step {step!r}")
    for convert in rules.convert:
        if {convert.source, convert.target} - set(catalog.types):
            raise CatalogError(f"rule {convert.id}: unknown artifact type")
    unknown = set(rules.bookends.categories) - {step.category for step in steps.values()}
    if unknown:
        raise CatalogError(f"bookends: unknown categories {sorted(unknown)}")
    recipes = {model.name for model in steps["sft/megatron_bridge"].models}
    if unknown := {family for family, hf in rules.families.items() if hf not in recipes}:
        raise CatalogError(f"families {sorted(unknown)}: not among sft/megatron_bridge's models")
    for row in rules.parallelism:
        if unknown := set(row.families) - set(rules.families):
            raise CatalogError(f"parallelism {row.gpu}: unknown families {sorted(unknown)}")


CATALOG = load_catalog()
