"""Experiment tracking through the libraries' own loggers: AutoModel's LoRA recipe and lm-eval log to a real MLflow
tracking server (SQLite backend, local artifact directory, loopback) and to W&B in offline mode; each
materialization's metadata links its run and provenance names it. Megatron-Bridge's logger fields:
test_megatron_bridge_config.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from conftest import DATA
from helpers import materialize_in_dagster

from nemotron_assets.artifacts.files import read_provenance
from nemotron_assets.errors import NamedError
from nemotron_assets.factory import tracking_metadata
from nemotron_assets.pipelines import PipelineSpec
from nemotron_assets.tracking import MlflowTracker, TrackedRun, WandbTracker
from resources.artifact_store import ArtifactStore

HELD_OUT = {"mcq_benchmark_parquet": "mcq", "training_jsonl": "split"}  # the split's held-out rows


def tracked_pipeline(name: str, tracking: dict[str, Any] | None) -> PipelineSpec:
    """chat -> split -> LoRA (AutoModel, tiny) -> lm-eval of the LoRA, logging to `tracking` (None: the profile's)."""
    sources = [
        {"name": "chat", "type": "training_jsonl", "path": str(DATA / "tiny_chat.jsonl")},
        {"name": "mcq", "type": "mcq_benchmark_parquet", "path": str(DATA / "tiny_mcq.parquet")},
    ]
    stages = [
        {"name": "split", "step": "data_prep/split", "consumes": {"training_jsonl": "chat"}},
        {"name": "lora", "step": "peft/automodel", "consumes": {"training_jsonl": "split"}},
        {"name": "lora_eval", "step": "eval/model_eval", "consumes": {"checkpoint_lora": "lora"} | HELD_OUT},
    ]
    stages = [s | {"preset": "tiny"} for s in stages]
    spec = {"name": name, "description": "tracked", "sources": sources, "stages": stages}
    return PipelineSpec.parse(spec | ({"tracking": tracking} if tracking else {}))


def materializations(result: dg.ExecuteInProcessResult) -> dict[str, dict[str, Any]]:
    assert result.success
    return {
        event.asset_key.path[-1]: event.materialization.metadata for event in result.get_asset_materialization_events()
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on loopback with a SQLite backend store and a local artifact directory."""
    directory = tmp_path_factory.mktemp("mlflow")
    uri = f"http://127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", uri.rsplit(":", 1)[1]]
    command += ["--backend-store-uri", f"sqlite:///{directory / 'mlflow.db'}", "--workers", "1"]
    command += ["--default-artifact-root", str(directory / "artifacts")]
    log = (directory / "server.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 180
        while True:
            try:
                if urllib.request.urlopen(f"{uri}/health", timeout=2).read() == b"OK":
                    break
            except OSError:
                assert server.poll() is None and time.time() < deadline, (directory / "server.log").read_text()
                time.sleep(1)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the workers it started, nothing else
        server.wait(30)


def test_automodel_and_lm_eval_log_to_a_real_mlflow_server(fixtures_dir: Path, mlflow_server: str, tmp_path: Path):
    from mlflow import MlflowClient

    pipeline = tracked_pipeline("mlf", {"kind": "mlflow", "tracking_uri": mlflow_server, "experiment": "tiny"})
    metadata = materializations(materialize_in_dagster(pipeline, tmp_path / "store"))
    assert "tracking/run" not in metadata["split"]  # data prep logs to no tracker
    client = MlflowClient(mlflow_server)
    store = ArtifactStore(root=str(tmp_path / "store"))
    runs = {}
    for name in ("lora", "lora_eval"):
        provenance = provenance_of(store, ("mlf", name))
        record = provenance["tracking"]
        assert metadata[name]["tracking/run_id"].value == record["run_id"]
        assert metadata[name]["tracking/run"] == dg.MetadataValue.url(record["url"])
        assert urllib.request.urlopen(record["url"]).status == 200
        runs[name] = client.get_run(record["run_id"])
        assert runs[name].info.run_name == f"mlf/{name}"
        assert runs[name].data.tags["nemotron.data_version"] == provenance["version"]
        assert client.get_experiment(runs[name].info.experiment_id).name == "tiny"

    lora = runs["lora"]  # AutoModel's MLflowConfig: the recipe config as parameters, each step's metrics
    assert lora.data.params["peft.dim"] == "16" and lora.data.params["step_scheduler.max_steps"] == "10"
    losses = sorted(client.get_metric_history(lora.info.run_id, "loss"), key=lambda m: m.step)
    logged = [json.loads(line) for line in read_log(store, ("mlf", "lora"))]  # the recipe's own training log, 10 steps
    assert [(m.step, round(m.value, 4)) for m in losses] == [(r["step"], round(r["loss"], 4)) for r in logged]

    scores = runs["lora_eval"]  # the evaluation: its settings as parameters, the scores as metrics
    stats = provenance_of(store, ("mlf", "lora_eval"))["stats"]
    assert scores.data.metrics == pytest.approx(stats) and "nemotron_mcq/acc" in stats
    assert scores.data.params["harness"].startswith("lm-eval ") and scores.data.params["limit"] == "None"


def read_log(store: ArtifactStore, key: tuple[str, str]) -> list[str]:
    return (store.current(key)[1] / "training_log.jsonl").read_text().splitlines()


def provenance_of(store: ArtifactStore, key: tuple[str, str]) -> dict[str, Any]:
    return read_provenance(store.current(key)[1])


def offline_records(run_dir: Path) -> list[Any]:
    """Every record of a W&B offline run file, as W&B's own reader parses it."""
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal.datastore import DataStore

    store = DataStore()
    store.open_for_scan(str(next(run_dir.glob("*.wandb"))))
    records = []
    while (data := store.scan_data()) is not None:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        records.append(record)
    return records


def items(updates: Any) -> dict[str, Any]:
    """W&B record items (history, summary, config) as {key: value}."""
    return {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in updates}


def test_automodel_and_lm_eval_log_to_wandb_offline(fixtures_dir: Path, tmp_path: Path):
    tracking = {"kind": "wandb", "project": "tiny", "entity": "nemotron", "mode": "offline"}
    pipeline = tracked_pipeline("wb", tracking)
    metadata = materializations(materialize_in_dagster(pipeline, tmp_path / "store"))
    store = ArtifactStore(root=str(tmp_path / "store"))
    for name in ("lora", "lora_eval"):
        provenance = provenance_of(store, ("wb", name))
        record = provenance["tracking"]
        assert record["run_id"] == provenance["version"] and record["mode"] == "offline"
        assert metadata[name]["tracking/run"] == dg.MetadataValue.path(record["directory"])
        run_dir = next(Path(record["directory"]).glob(f"offline-run-*-{record['run_id']}"))
        records = offline_records(run_dir)
        run = next(r.run for r in records if r.HasField("run"))
        assert (run.project, run.entity, run.display_name) == ("tiny", "nemotron", f"wb/{name}")
        history = [items(r.history.item) for r in records if r.HasField("history")]
        if name == "lora":  # AutoModel's WandbConfig: the recipe config, and the loss of every step
            assert items(run.config.update)["peft"]["dim"] == 16
            logged = [json.loads(line) for line in read_log(store, ("wb", name))]
            assert [(h["step"], round(h["loss"], 4)) for h in history] == [
                (r["step"], round(r["loss"], 4)) for r in logged
            ]
        else:  # lm-eval's WandbLogger: the scores
            summary = items(item for r in records if r.HasField("summary") for item in r.summary.update)
            logged = {**{k: v for h in history for k, v in h.items()}, **summary}
            assert {k: logged[k] for k in provenance["stats"]} == pytest.approx(provenance["stats"])


def test_a_profile_names_the_tracker_of_every_pipeline_run_on_it(
    fixtures_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A profile's [tracking] applies to pipelines that name none: the LoRA run lands in the profile's W&B project."""
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    local = (Path(__file__).parents[1] / "env_profiles" / "local_cpu.toml").read_text()
    tracking = '\n[tracking]\nkind = "wandb"\nproject = "team"\nentity = "lab"\nmode = "offline"\n'
    (profiles / "tracked_cpu.toml").write_text(local + tracking)
    monkeypatch.setenv("NEMOTRON_PROFILE_DIR", str(profiles))
    pipeline = tracked_pipeline("pt", None)
    metadata = materializations(materialize_in_dagster(pipeline, tmp_path / "store", profile="tracked_cpu"))
    record = provenance_of(ArtifactStore(root=str(tmp_path / "store")), ("pt", "lora"))["tracking"]
    assert metadata["lora"]["tracking/run"] == dg.MetadataValue.path(record["directory"])
    run_dir = next(Path(record["directory"]).glob(f"offline-run-*-{record['run_id']}"))
    run = next(r.run for r in offline_records(run_dir) if r.HasField("run"))
    assert (run.project, run.entity, run.display_name) == ("team", "lab", "pt/lora")


def test_a_credential_is_named_never_written(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    tracker = WandbTracker(kind="wandb", project="p", entity="e", api_key_env="TEAM_WANDB_KEY")
    run = TrackedRun(tracker, "p/sft", {}, "v1", tmp_path)
    monkeypatch.delenv("TEAM_WANDB_KEY", raising=False)
    with pytest.raises(NamedError, match="tracker_credentials_not_set: the tracker names TEAM_WANDB_KEY"):
        run.env()
    monkeypatch.setenv("TEAM_WANDB_KEY", "s3cret")
    assert run.env()["WANDB_API_KEY"] == "s3cret"  # the job's environment only
    assert "s3cret" not in str(run.automodel()) + str(run.bridge()) + str(run.lm_eval_args(str(tmp_path)))
    assert run.record(tmp_path)["url"] == "https://wandb.ai/e/p/runs/v1"
    with pytest.raises(ValueError, match="pattern"):
        WandbTracker(kind="wandb", project="p", entity="e", api_key_env="s3cret-value")


def test_an_mlflow_store_without_a_web_server_is_named_by_its_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A sqlite: (or file:, databricks) tracking URI has no run page to link: the metadata names the store. The
    token reaches MLflow's client for the logging only, never the Dagster process's environment."""
    from mlflow import MlflowClient

    monkeypatch.setenv("MY_MLFLOW_TOKEN", "s3cret")
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(kind="mlflow", tracking_uri=uri, token_env="MY_MLFLOW_TOKEN")
    run = TrackedRun(tracker, "p/eval", {}, "v1", tmp_path)
    run.log_evaluation(tmp_path, {"tasks": ["mcq"]}, {"mcq/acc": 0.5})
    assert "MLFLOW_TRACKING_TOKEN" not in os.environ
    record = run.record(tmp_path)
    assert record["tracking_uri"] == uri and "url" not in record
    assert MlflowClient(uri).get_run(record["run_id"]).data.metrics == {"mcq/acc": 0.5}
    metadata = tracking_metadata(record)
    assert metadata["tracking/run"] == dg.MetadataValue.text(uri)
    assert metadata["tracking/run_id"] == dg.MetadataValue.text(record["run_id"])
