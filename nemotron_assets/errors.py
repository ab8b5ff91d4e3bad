"""Named errors: every failure a user can fix carries the catalog's error name and recovery text."""

from __future__ import annotations

from typing import Any


class NamedError(Exception):
    """A catalog-named, user-fixable failure; nothing is published when one is raised."""

    def __init__(self, name: str, detail: str, recovery: str):
        super().__init__(f"{name}: {detail}")
        self.name, self.detail, self.recovery = name, detail, recovery

    def __reduce__(self):
        """Pickle by the three fields, so a worker process's error reaches its parent as the same error."""
        return type(self), (self.name, self.detail, self.recovery)

    def __str__(self) -> str:
        return f"{self.name}: {self.detail}\n  recovery: {self.recovery}"

    def to_json(self) -> dict[str, Any]:
        return {"error": self.name, "detail": self.detail, "recovery": self.recovery}


def contract_error(name: str, detail: str) -> NamedError:
    """An artifact-contract error from catalog/errors.toml."""
    from nemotron_assets.catalog import CATALOG

    return NamedError(name, detail, CATALOG.contract_errors[name])


def step_error(step_id: str, name: str, detail: str) -> NamedError:
    """A step's own named error from its catalog file."""
    from nemotron_assets.catalog import CATALOG

    return NamedError(name, detail, CATALOG.step(step_id).recovery(name))
