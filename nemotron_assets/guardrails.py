"""Checks before anything is launched: the hardware profile can run the step, and CPU-heavy steps take no GPUs."""

from __future__ import annotations

import os
from typing import Any

from nemotron_assets.catalog import StepSpec
from nemotron_assets.errors import NamedError, contract_error, step_error
from resources.profile import DEFAULT_PROFILE, Profile

CPU_CATEGORIES = frozenset({"data_prep", "curate", "sdg", "env"})  # tokenising, filtering, generating: CPU/Ray work


def model_of(step: StepSpec, params: dict[str, Any]) -> str | None:
    """The model the step runs: the one whose weights or architecture it loads, or that it serves."""
    names = step.model_parameters("weights", "architecture", "served")
    return next((params[name] for name in names if params.get(name)), None)


def minimum_gpus(step: StepSpec, params: dict[str, Any]) -> int:
    """The step's own minimum, raised to the catalog's minimum for the model the parameters name."""
    by_model = {option.name: option.min_gpus for option in step.models}
    return max(step.min_gpus, by_model.get(model_of(step, params), 0))


def gpus_for(step: StepSpec, profile: Profile) -> int:
    """GPUs of a node the step may use: none for CPU-heavy steps, whatever the profile has."""
    return 0 if step.category in CPU_CATEGORIES else profile.gpus_per_node


def gpu_pool(step: StepSpec) -> str | None:
    """The Dagster pool of steps that may take GPUs, named after the code location's default profile
    (`dagster instance concurrency set hw_<profile> N` caps them across runs); CPU-heavy steps have none."""
    if step.category in CPU_CATEGORIES:
        return None
    return f"hw_{os.environ.get('NEMOTRON_PROFILE', DEFAULT_PROFILE)}"


def check_hardware(step: StepSpec, params: dict[str, Any], profile: Profile) -> None:
    """insufficient_hardware unless the profile has the GPUs the step and its model need."""
    needed = minimum_gpus(step, params)
    if needed <= profile.gpus:
        return
    model = model_of(step, params)
    detail = (
        f"{step.id}{f' with {model}' if model else ''} needs {needed} GPUs; profile {profile.name} has {profile.gpus}"
    )
    raise hardware_error(step, detail)


def hardware_error(step: StepSpec, detail: str) -> NamedError:
    """The step's own insufficient_hardware (its recovery names its options), else the platform's."""
    if any(error.name == "insufficient_hardware" for error in step.errors):
        return step_error(step.id, "insufficient_hardware", detail)
    return contract_error("insufficient_hardware", detail)
