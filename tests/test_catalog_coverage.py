"""The catalog says what the code does: every declared named error is raised by the code and triggered by a test,
every declared parameter is read by its step's code, and a named-error test names the error it expects.

Read statically from the sources (string constants in the syntax trees), so the check holds for any subset of tests
that runs and costs no execution."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from helpers import import_closure, module_file, syntax_tree

from nemotron_assets.catalog import CATALOG
from nemotron_assets.catalog.models import StepSpec

PACKAGE = Path(__file__).resolve().parents[1] / "nemotron_assets"
TESTS = Path(__file__).resolve().parent


def strings(paths: list[Path]) -> set[str]:
    return {
        node.value
        for path in paths
        for node in ast.walk(syntax_tree(path))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }


def mentioned(name: str, texts: set[str]) -> bool:
    """The name as a word of a string (a test's `match="name: detail"`, an expected `{"error": "name"}`)."""
    return any(re.search(rf"(?<!\w){name}(?!\w)", text) for text in texts)


def step_code(step: StepSpec) -> list[Path]:
    """The step's own code: the package its entry lives in (config builder, job backend) and the step modules
    that package imports, transitively."""
    return import_closure(module_file(step.entry.split(":")[0]).parent.glob("*.py"), "nemotron_assets.steps")


ALL_CODE = sorted(PACKAGE.rglob("*.py")) + sorted((PACKAGE.parent / "resources").rglob("*.py"))  # + launchers, store
TEST_CODE = sorted(p for p in TESTS.rglob("*.py") if p.name != Path(__file__).name)
WIRING = sorted((PACKAGE / "pipelines").glob("*.py")) + [PACKAGE / "factory.py", PACKAGE / "gates.py"]
# what raises for every step: the contracts of its inputs and outputs, the job runtime (oom), the planner (a plan
# the hardware cannot run)
SHARED = sorted((PACKAGE / "artifacts").glob("*.py")) + [PACKAGE / "job.py", PACKAGE / "planning.py"]
RUNNABLE = [step for step in CATALOG.steps.values() if step.entry]


CODE_STRINGS = strings(ALL_CODE)
TEST_STRINGS = strings(TEST_CODE)


@pytest.mark.parametrize("step", RUNNABLE, ids=lambda step: step.id)
def test_every_declared_error_is_raised_by_the_code_and_by_a_test(step: StepSpec):
    declared = sorted(error.name for error in step.errors if not error.fed)  # fed: raised by its artifact type
    own = strings(step_code(step) + WIRING + SHARED)  # not another step's code
    unraised = [name for name in declared if name not in own]
    untested = [name for name in declared if not mentioned(name, TEST_STRINGS)]
    assert not unraised, f"{step.id} declares errors that only other steps' code raises: {unraised}"
    assert not untested, f"{step.id} declares errors no test triggers: {untested}"


def test_every_contract_error_is_raised_by_the_code_and_by_a_test():
    declared = sorted(CATALOG.contract_errors)
    unraised = [name for name in declared if name not in CODE_STRINGS]
    untested = [name for name in declared if not mentioned(name, TEST_STRINGS)]
    assert not unraised, f"contract errors no code raises: {unraised}"
    assert not untested, f"contract errors no test triggers: {untested}"


def read_by(name: str, groups: set[str], typed: set[str]) -> bool:
    """Read from the typed parameters (`run.p.peft.dim`, or the group `run.p.peft` used whole), or as a group passed
    through whole (named in a tuple of group names holding "dpo")."""
    parts = name.split(".")
    prefixes = [".".join(parts[:i]) for i in range(1, len(parts))]
    return name in typed or any(prefix in groups or prefix in typed for prefix in prefixes)


def typed_reads(tree: ast.AST) -> set[str]:
    """Dotted names read from a step's typed parameters: each whole attribute chain after `<name>.p` (`run.p.peft.dim`
    -> "peft.dim"; the inner `run.p.peft` of that chain is not a read of the group), less a method called on the
    value (`run.p.train.model_dump()` -> "train")."""
    inner = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    reads = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or id(node) in inner:
            continue
        parts = []
        if id(node) in called:
            node = node.value
        while isinstance(node, ast.Attribute) and not (node.attr == "p" and isinstance(node.value, ast.Name)):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Attribute) and parts:
            reads.add(".".join(reversed(parts)))
    return reads


def test_typed_reads_are_whole_chains():
    tree = ast.parse("run.p.peft.dim + f(run.p.train) + run.p.seed.bit_length() + run.params.alpha + g(run.p)")
    assert typed_reads(tree) == {"peft.dim", "train", "seed"}
    assert typed_reads(ast.parse("run.p.model_dump()")) == set()  # the whole parameters are no group
    typed = typed_reads(tree)
    assert read_by("peft.dim", set(), typed) and read_by("train.train_iters", set(), typed)
    assert not read_by("peft.alpha", set(), typed) and not read_by("alpha", set(), typed)


def group_names(paths: list[Path]) -> set[str]:
    """The strings of tuple, list and set literals (`CONFIG_GROUPS = ("dpo", "grpo")`)."""
    return {
        element.value
        for path in paths
        for node in ast.walk(syntax_tree(path))
        if isinstance(node, (ast.Tuple, ast.List, ast.Set))
        for element in node.elts
        if isinstance(element, ast.Constant) and isinstance(element.value, str)
    }


@pytest.mark.parametrize("step", RUNNABLE, ids=lambda step: step.id)
def test_every_declared_parameter_is_read_by_its_step(step: StepSpec):
    code = step_code(step)
    groups = group_names(code)
    typed = {name for path in code for name in typed_reads(syntax_tree(path))}
    wiring = strings(WIRING)  # an unversioned parameter may wire the stage into its pipeline instead
    unread = [
        p.name for p in step.parameters if not read_by(p.name, groups, typed) and (p.versioned or p.name not in wiring)
    ]
    assert not unread, f"{step.id} declares parameters its code never reads: {unread}"


def checks_name(function: ast.AST, caught: str) -> bool:
    """`caught.value.name` is compared somewhere in the test function."""
    return any(
        isinstance(node, ast.Compare)
        and any(
            isinstance(side, ast.Attribute)
            and side.attr == "name"
            and isinstance(side.value, ast.Attribute)
            and getattr(side.value.value, "id", "") == caught
            for side in (node.left, *node.comparators)
        )
        for node in ast.walk(function)
    )


def test_a_named_error_test_names_the_error():
    """`pytest.raises(NamedError)` alone passes on any error: each says which (match=, or a check of .value.name)."""
    unnamed = [
        f"{path.name}:{item.context_expr.lineno}"
        for path in TEST_CODE
        for function in ast.walk(syntax_tree(path))
        if isinstance(function, ast.FunctionDef)
        for node in ast.walk(function)
        if isinstance(node, ast.With)
        for item in node.items
        if isinstance(item.context_expr, ast.Call)
        and getattr(item.context_expr.func, "attr", "") == "raises"
        and any(getattr(a, "id", "") == "NamedError" for a in item.context_expr.args)
        and not any(k.arg == "match" for k in item.context_expr.keywords)
        and not (item.optional_vars is not None and checks_name(function, item.optional_vars.id))
    ]
    assert not unnamed, f"pytest.raises(NamedError) that accepts any error: {unnamed}"
