"""Failure semantics through Dagster: a job lost to the infrastructure is retried and resumes; a failed step is not
retried; nothing half-written is published."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from conftest import DATA
from helpers import materialize_in_dagster

from nemotron_assets import launchers
from nemotron_assets.pipelines import PipelineSpec
from nemotron_assets.steps.launch import InfrastructureFailure, LaunchFailed

PIPELINE = PipelineSpec.parse(
    {
        "name": "r",
        "description": "one tiny LoRA",
        "sources": [{"name": "chat", "type": "training_jsonl", "path": str(DATA / "tiny_chat.jsonl")}],
        "stages": [
            {"name": "lora", "step": "peft/automodel", "consumes": {"training_jsonl": "chat"}, "preset": "tiny"}
        ],
    }
)


def failing_first(error: Exception, attempts: list[int]):
    """The local launcher, except that its first launch raises `error`."""

    def factory(context: dg.AssetExecutionContext, profile, gpus: int):
        real = launchers.pipes_subprocess(context, profile, gpus)

        def launch(command: list[str], env: dict[str, str]) -> None:
            attempts.append(context.retry_number)
            if len(attempts) == 1:
                raise error
            real(command, env)

        return launch

    return factory


def test_a_job_lost_to_the_infrastructure_is_retried(
    fixtures_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    attempts: list[int] = []
    monkeypatch.setitem(launchers.LAUNCHERS, "local", failing_first(InfrastructureFailure("node lost"), attempts))
    result = materialize_in_dagster(PIPELINE, tmp_path)
    assert result.success and attempts == [0, 1]
    assert any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)
    assert result.asset_materializations_for_node("r__lora")[0].metadata["steps"].value == 10


def test_a_failed_step_is_not_retried_and_publishes_nothing(fixtures_dir: Path, tmp_path: Path, monkeypatch):
    attempts: list[int] = []
    monkeypatch.setitem(launchers.LAUNCHERS, "local", failing_first(LaunchFailed("exit 1"), attempts))
    result = materialize_in_dagster(PIPELINE, tmp_path)
    assert not result.success and attempts == [0]
    assert not any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)
    assert not [p for p in (tmp_path / "r" / "lora").glob("*") if p.name != ".work"]
