"""Code versions, derived: a step's version is a digest of the source of its implementation and of the versions
of the libraries it runs, so a change to either marks its artifacts stale and nothing is typed by hand.

The implementation is the step's library package (`steps/<library>/`, whose job backends a launched job runs),
every module under `nemotron_assets.steps` it imports, transitively, and the job entry point
(`nemotron_assets.job`), with the package data they read (`PACKAGE_DIR / "eval_tasks"`): the code that decides
the artifact's bytes.
Orchestration (catalog, contracts, store, Dagster wiring) is not part of it, so a change there reuses artifacts.
"""

from __future__ import annotations

import ast
import functools
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from nemotron_assets.catalog import CATALOG, StepSpec
from nemotron_assets.digests import file_digest, json_digest
from nemotron_assets.paths import PACKAGE_DIR

IMPLEMENTATION = ("nemotron_assets.steps", "nemotron_assets.job")


def module_file(module: str, root: Path) -> Path | None:
    """The source file of a module of this package under `root` (a package's __init__.py), None if not one."""
    relative = Path(*module.split(".")[1:])
    for path in (root / relative.with_suffix(".py"), root / relative / "__init__.py"):
        if path.is_file():
            return path
    return None


def parse(source: bytes) -> ast.Module:
    """The source's syntax tree. CPython before 3.12 shares one AST recursion counter between threads, so a parse
    racing another thread's (Ray's, a tracker's) can fail with a spurious SystemError (CPython gh-106905): the
    parse is retried once, and a real error raises again."""
    try:
        return ast.parse(source)
    except SystemError:
        return ast.parse(source)


@functools.cache
def references(source: bytes) -> tuple[frozenset[str], frozenset[str]]:
    """The modules a source file imports (`from a import b` counts `a` and `a.b`, which may be a module) and the
    package data directories it addresses as `PACKAGE_DIR / "<name>"` (once per distinct source)."""
    modules: set[str] = set()
    data: set[str] = set()
    for node in ast.walk(parse(source)):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif (
            isinstance(node, ast.BinOp)
            and isinstance(node.left, ast.Name)
            and node.left.id == "PACKAGE_DIR"
            and isinstance(node.right, ast.Constant)
        ):
            data.add(str(node.right.value))
    return frozenset(modules), frozenset(data)


def implementation(entry_module: str, root: Path = PACKAGE_DIR) -> dict[str, Path]:
    """{module or data file: file} of the entry module's package, the implementation modules it reaches and the
    package data they read."""
    package = entry_module.rsplit(".", 1)[0]
    siblings = (module_file(package, root) or root).parent.glob("*.py")
    found: dict[str, Path] = {}
    pending = [
        entry_module,
        *IMPLEMENTATION,
        *(f"{package}.{path.stem}" for path in siblings if path.stem != "__init__"),
    ]
    while pending:
        module = pending.pop()
        if module in found or not module.startswith(IMPLEMENTATION):
            continue
        path = module_file(module, root)
        if path is not None:
            found[module] = path
            modules, data = references(path.read_bytes())
            parents = [".".join(module.split(".")[:n]) for n in range(2, module.count(".") + 1)]
            pending += [*modules, *parents]  # a module's package runs its __init__ first
            for name in data:
                files = (p for p in sorted((root / name).rglob("*")) if p.is_file() and "__pycache__" not in p.parts)
                found |= {p.relative_to(root).as_posix(): p for p in files}
    return found


def library_versions(step: StepSpec) -> dict[str, str]:
    """The installed version of each library the step runs ('absent' where this environment lacks it: a light
    Dagster host whose jobs run in images)."""

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "absent"

    return {name: installed(name) for name in step.libraries}


def code_version(step: StepSpec, root: Path = PACKAGE_DIR) -> str | None:
    """The digest of the step's implementation source and library versions; None for a step with no entry."""
    if step.entry is None:
        return None
    modules = implementation(step.entry.split(":")[0], root)
    sources = {name: file_digest(path) for name, path in sorted(modules.items())}
    return json_digest({"sources": sources, "libraries": library_versions(step)})[:16]


@functools.cache
def step_code_version(step_id: str) -> str | None:
    """The code version of a catalog step in this checkout (computed once per process)."""
    return code_version(CATALOG.step(step_id))
