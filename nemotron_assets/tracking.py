"""Experiment tracking: the tracker a pipeline or profile names (MLflow or Weights & Biases), written into each
library's own logger configuration (AutoModel's `mlflow:` / `wandb:` recipe blocks, Megatron-Bridge's LoggerConfig,
lm-eval's W&B logger), and the run a materialization logged to (its id and link, for metadata and provenance).

Credentials are only named (`token_env`, `api_key_env`): a value is read from the launching environment into the
job's environment, under the name the library reads, and is never written anywhere.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints

from nemotron_assets.catalog.models import StrictModel
from nemotron_assets.errors import contract_error

EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Z_][A-Z0-9_]*$")]
RUN_FILE = "tracking_run.json"  # written by a job into its work directory: the MLflow run the library started
WANDB_DIR = ".wandb"  # under the artifact root unless the tracker names a directory (gc skips dot directories)


class MlflowTracker(StrictModel):
    """An MLflow tracking server; runs go into `experiment`."""

    kind: Literal["mlflow"]
    tracking_uri: str = Field(description="e.g. http://mlflow.internal:5000")
    experiment: str = "nemotron"
    token_env: EnvName | None = Field(None, description="Variable holding a bearer token (MLFLOW_TRACKING_TOKEN)")


class WandbTracker(StrictModel):
    """A Weights & Biases project; `offline` keeps runs on disk for `wandb sync`."""

    kind: Literal["wandb"]
    project: str
    entity: str
    mode: Literal["online", "offline"] = "online"
    api_key_env: EnvName = Field("WANDB_API_KEY", description="Variable holding the API key (online mode)")
    base_url: str = "https://api.wandb.ai"
    dir: str | None = Field(None, description=f"Where run files are kept; None = <artifact root>/{WANDB_DIR}")


Tracker = Annotated[MlflowTracker | WandbTracker, Field(discriminator="kind")]


@dataclass(frozen=True)
class TrackedRun:
    """The tracker run of one materialization: its name (the asset key), tags, and for W&B the run id (the data
    version, so a retried attempt resumes the same run) and the directory its files go to."""

    tracker: MlflowTracker | WandbTracker
    name: str
    tags: dict[str, str]
    version: str
    directory: Path

    def env(self) -> dict[str, str]:
        """The job's tracking environment: the credential under the name the library reads; W&B's run id and mode."""
        t = self.tracker
        if isinstance(t, MlflowTracker):
            return {"MLFLOW_TRACKING_TOKEN": _secret(t.token_env)} if t.token_env else {}
        env = {"WANDB_RUN_ID": self.version, "WANDB_RESUME": "allow", "WANDB_MODE": t.mode}
        env["WANDB_BASE_URL"] = t.base_url
        return env | ({"WANDB_API_KEY": _secret(t.api_key_env)} if t.mode == "online" else {})

    def automodel(self) -> dict[str, Any]:
        """AutoModel's recipe block (its MLflowConfig / WandbConfig)."""
        t = self.tracker
        if isinstance(t, MlflowTracker):
            block = {"experiment_name": t.experiment, "run_name": self.name, "tracking_uri": t.tracking_uri}
            return {"mlflow": block | {"tags": self.tags}}
        return {"wandb": self._wandb() | {"tags": sorted(f"{k}={v}" for k, v in self.tags.items())}}

    def bridge(self) -> dict[str, Any]:
        """Megatron-Bridge's LoggerConfig fields."""
        t = self.tracker
        if isinstance(t, MlflowTracker):
            return {
                "mlflow_experiment": t.experiment,
                "mlflow_run_name": self.name,
                "mlflow_tracking_uri": t.tracking_uri,
                "mlflow_tags": self.tags,
            }
        return {
            "wandb_project": t.project,
            "wandb_entity": t.entity,
            "wandb_exp_name": self.name,
            "wandb_save_dir": self.directory,
        }

    def lm_eval_args(self, job_directory: str) -> list[str]:
        """lm-eval's own W&B logger (`--wandb_args`; `directory` as the job sees it); lm-eval has no MLflow logger
        (see log_evaluation)."""
        if isinstance(self.tracker, MlflowTracker):
            return []
        return ["--wandb_args", ",".join(f"{k}={v}" for k, v in self._wandb(job_directory).items())]

    def _wandb(self, directory: Path | str | None = None) -> dict[str, Any]:
        t = self.tracker
        return {"project": t.project, "entity": t.entity, "name": self.name, "dir": directory or self.directory}

    def log_evaluation(
        self, work_dir: Path, settings: dict[str, Any], scores: dict[str, float], wandb_logged: bool = False
    ) -> None:
        """A run with the evaluation's settings as parameters (config) and its scores as metrics, through the
        tracker's own client: MLflow's always (lm-eval has no MLflow logger), W&B's unless the harness logged there
        itself (`wandb_logged`: lm-eval's W&B logger, which `lm_eval_args` configures)."""
        t = self.tracker
        if isinstance(t, WandbTracker):
            if not wandb_logged:
                self.log_wandb(settings, scores)
            return
        from mlflow import MlflowClient

        from nemotron_assets.steps.launch import scoped_environ  # the steps package imports this module

        with scoped_environ(self.env()):  # the client reads the token at each request, where MLflow's code does
            client = MlflowClient(t.tracking_uri)
            experiment = client.get_experiment_by_name(t.experiment)
            experiment_id = experiment.experiment_id if experiment else client.create_experiment(t.experiment)
            run = client.create_run(experiment_id, run_name=self.name, tags=self.tags)
            for key, value in settings.items():
                client.log_param(run.info.run_id, key, json.dumps(value) if isinstance(value, list | dict) else value)
            for key, value in scores.items():
                client.log_metric(run.info.run_id, key, float(value))
            client.set_terminated(run.info.run_id)
        record_mlflow_run(work_dir, run.info.run_id, experiment_id)

    def log_wandb(self, settings: dict[str, Any], scores: dict[str, float]) -> None:
        import wandb

        t = self.tracker  # passed to this run only: the Dagster process's environment stays as it was
        key = {"api_key": _secret(t.api_key_env)} if t.mode == "online" else {}
        self.directory.mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            **self._wandb(), id=self.version, resume="allow", config=settings, mode=t.mode,
            settings=wandb.Settings(base_url=t.base_url, **key),
        )  # fmt: skip
        run.log(scores)
        run.finish()
        wandb.teardown()  # stop W&B's service: the jobs this process launches later start their own

    def record(self, work_dir: Path) -> dict[str, Any]:
        """Provenance of the run: tracker, run id and its link (a local W&B offline run: its directory; an MLflow
        store that is no web server: its tracking URI)."""
        t = self.tracker
        if isinstance(t, MlflowTracker):
            logged = json.loads((work_dir / RUN_FILE).read_text())
            run_id, experiment = logged["run_id"], logged["experiment_id"]
            url = f"{t.tracking_uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}"
            web = t.tracking_uri.startswith(("http://", "https://"))  # else a store: sqlite:, file:, databricks
            where = {"url": url} if web else {"tracking_uri": t.tracking_uri}
            return {"tracker": "mlflow", "run_id": run_id, "experiment": t.experiment} | where
        record = {"tracker": "wandb", "run_id": self.version, "project": t.project, "entity": t.entity}
        if t.mode == "offline":
            return record | {"mode": "offline", "directory": str(self.directory / "wandb")}
        app = t.base_url.replace("://api.", "://", 1)  # https://api.wandb.ai -> https://wandb.ai
        return record | {"url": f"{app}/{t.entity}/{t.project}/runs/{self.version}"}


def _secret(name: str) -> str:
    if not os.environ.get(name):
        raise contract_error("tracker_credentials_not_set", f"the tracker names {name}, which is not set")
    return os.environ[name]


def record_mlflow_run(work_dir: Path | str, run_id: str, experiment_id: str) -> None:
    (Path(work_dir) / RUN_FILE).write_text(json.dumps({"run_id": run_id, "experiment_id": experiment_id}))


def record_active_mlflow_run(work_dir: str) -> None:
    """In a job, after the library trained: the MLflow run its logger started (none when MLflow is not named)."""
    try:
        import mlflow
    except ImportError:
        return
    run = mlflow.active_run()
    if run is not None:
        record_mlflow_run(work_dir, run.info.run_id, run.info.experiment_id)
