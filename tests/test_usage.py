"""Usage and cost per materialization: in metadata, in provenance, summed per pipeline by `demo summary`."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest
import yaml
from conftest import DATA
from helpers import materialize_in_dagster

from nemotron_assets.demo import summary
from nemotron_assets.job import PEAK_GPU_MEMORY, peak_gpu_memory_gb, report_peak_gpu_memory
from nemotron_assets.launchers import pipes_subprocess
from nemotron_assets.pipelines import PipelineSpec
from nemotron_assets.steps.launch import Measured
from nemotron_assets.usage import metered, usage
from resources.artifact_store import ArtifactStore
from resources.profile import PROFILE_DIR, load_profile

PACKED = {
    "name": "use",
    "description": "chat data packed: a CPU step that reports the tokens it processed",
    "sources": [{"name": "chat", "type": "training_jsonl", "path": str(DATA / "tiny_chat.jsonl")}],
    "stages": [
        {
            "name": "packed",
            "step": "data_prep/sft_packing",
            "consumes": {"training_jsonl": "chat"},
            "preset": "tiny",
            "config": {"tokenizer": "${NEMOTRON_BASE_MODEL}"},
        }
    ],
}


def test_gpu_hours_from_the_scheduler_or_where_the_gpus_were_held_for_the_wall_time():
    assert usage(1800, 8, "local", {"trained_tokens": 5}, 2.5) == {
        "wall_seconds": 1800,
        "gpus": 8,
        "gpu_hours": 4.0,
        "gpu_hours_from": "wall_time",
        "cost": 10.0,
        "tokens": 5,
    }
    # a Slurm step's host wall time includes its jobs' queue wait: their accounted hours count, summed
    jobs = [Measured(1.5, "sacct"), Measured(0.5, "sacct", peak_gpu_memory_gb=30.2)]
    assert usage(7200, 8, "slurm", {}, 2.0, jobs) == {
        "wall_seconds": 7200,
        "gpus": 8,
        "gpu_hours": 2.0,
        "gpu_hours_from": "sacct",
        "cost": 4.0,
        "peak_gpu_memory_gb": 30.2,
    }
    unrecorded = [Measured(1.0, "sacct"), Measured()]  # one job without a record: left out, not guessed
    assert usage(1800, 8, "slurm", {"tokens": 7}, 2.5, unrecorded) == {"wall_seconds": 1800, "gpus": 8, "tokens": 7}
    assert usage(1800, 8, "lepton", {}, 2.5) == {"wall_seconds": 1800, "gpus": 8}
    assert usage(60, 0, "slurm", {}, None)["gpu_hours"] == 0.0


def test_metered_keeps_every_launch():
    launches: list[Measured] = []
    results = iter([Measured(0.25, "pod"), None])
    launch = metered(lambda command, env: next(results), launches)
    assert launch(["a"], {}) == Measured(0.25, "pod") and launch(["b"], {}) is None
    assert launches == [Measured(0.25, "pod"), Measured()]


REPORTING_JOB = """
from dagster_pipes import open_dagster_pipes
with open_dagster_pipes() as pipes:
    pipes.report_custom_message({"peak_gpu_memory_gb": 1.25})
    pipes.report_custom_message({"peak_gpu_memory_gb": 0.5})
    pipes.report_custom_message("unrelated")
"""


def test_a_peak_reported_over_pipes_reaches_the_usage_record():
    """A real Pipes subprocess (the local launcher) reports the message a CUDA job sends; the highest peak is
    what the step's usage record (metadata usage/*, provenance) shows."""
    launches: list[Measured] = []

    @dg.asset
    def probe(context):  # noqa: ANN001 (a string annotation here is refused by Dagster)
        metered(pipes_subprocess(context, load_profile("local_cpu"), 0), launches)(
            [sys.executable, "-c", REPORTING_JOB], {}
        )
        return dg.MaterializeResult()

    assert dg.materialize([probe]).success
    assert launches == [Measured(peak_gpu_memory_gb=1.25)]
    assert usage(3600, 1, "local", {}, None, launches)["peak_gpu_memory_gb"] == 1.25


def test_peak_gpu_memory_only_where_cuda_measured_it():
    """Without CUDA a job reports no peak (never a made-up one); with CUDA (verified on a GPU machine) the peak
    covers what the process allocated."""
    import torch

    reported: list[dict] = []
    if torch.cuda.is_available():
        kept = torch.ones(2**20, device="cuda")  # 4 MiB  # noqa: F841 (held until the peak is read)
    report_peak_gpu_memory(SimpleNamespace(report_custom_message=reported.append))
    report_peak_gpu_memory(None)  # a rank that does not report
    if torch.cuda.is_available():
        assert len(reported) == 1 and reported[0][PEAK_GPU_MEMORY] >= 4 / 1024
    else:
        assert peak_gpu_memory_gb() is None and reported == []


def test_usage_in_metadata_provenance_and_summary(fixtures_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "use.yaml").write_text(yaml.safe_dump(PACKED))
    monkeypatch.setenv("NEMOTRON_PIPELINE_DIRS", str(tmp_path / "pipelines"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    priced = tmp_path / "profiles"  # local_cpu with a price per GPU-hour
    priced.mkdir()
    (priced / "priced_cpu.toml").write_text("gpu_hour_price = 2.5\n" + (PROFILE_DIR / "local_cpu.toml").read_text())
    monkeypatch.setenv("NEMOTRON_PROFILE_DIR", str(priced))
    with dg.DagsterInstance.get() as instance:
        result = materialize_in_dagster(PipelineSpec.parse(PACKED), tmp_path / "store", "priced_cpu", instance)
    assert result.success
    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    tokens = metadata["tokens"].value
    assert metadata["usage/tokens"].value == tokens > 0 and metadata["usage/gpu_hours"].value == 0
    assert metadata["usage/cost"].value == 0  # 2.5 a GPU-hour x no GPU
    assert metadata["usage/gpu_hours_from"].value == "wall_time" and "usage/peak_gpu_memory_gb" not in metadata
    provenance = ArtifactStore(root=str(tmp_path / "store")).current(("use", "packed"))[1] / "provenance.json"
    recorded = yaml.safe_load(provenance.read_text())["usage"]
    assert recorded["tokens"] == tokens and recorded["wall_seconds"] == metadata["usage/wall_seconds"].value
    usage_lines = summary("use").splitlines()[-5:-3]
    assert f"{tokens:,} tokens, 0.0 cost" in usage_lines[0] and "peak GPU memory" not in usage_lines[0]  # none on CPU
    assert usage_lines[1].strip() == "over 1 materializations that did the work"
