"""eval/model_eval with `backend = nemo_evaluator`: the NeMo Evaluator Launcher's own run config, and running it.

The config is a launcher (Hydra) run config on the launcher's packaged defaults: an OpenAI-compatible endpoint
(`deployment: none`, `target.api_endpoint`; upstream's hosted `tiny_chat` shape) or a local HF checkpoint the
launcher serves itself (`deployment: vllm`), exact launcher task ids (`nemo-evaluator-launcher ls tasks`), the
`local` executor. The API key is only named: `api_key_name`, and a `runtime:` env var so that the launcher writes
no value into its `.secrets.env` either; HF_TOKEN passes through the same way (gated datasets; launcher 0.2.6's local
executor also fails on a config without any env var). The launcher is the executable NEMOTRON_EVALUATOR_LAUNCHER
names or `nemo-evaluator-launcher` on PATH (it needs its own environment: hydra pins an antlr that breaks Dagster's).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from nemotron_assets.errors import step_error
from nemotron_assets.steps import InputArtifact, StepRun
from nemotron_assets.steps.launch import LaunchFailed

CONFIG = "nemo_evaluator.yaml"
LAUNCHER_ENV = "NEMOTRON_EVALUATOR_LAUNCHER"
GENERATION = {  # upstream tiny_chat's request parameters: greedy, one request at a time
    "temperature": 0.0,
    "top_p": 1.0,
    "max_new_tokens": 1024,
    "max_retries": 5,
    "parallelism": 1,
    "request_timeout": 3600,
}
POLL_SECONDS = 5


def served_checkpoint(run: StepRun, checkpoint: InputArtifact | None) -> dict[str, Any]:
    """The launcher's vLLM deployment of the consumed HF checkpoint, or of `model` (a local path or a hub id)."""
    if checkpoint is not None and checkpoint.type == "checkpoint_lora":
        raise run.error("adapter_not_deployable", f"{checkpoint.name} is a LoRA adapter")
    source = str(checkpoint.path) if checkpoint else run.p.model
    if not source:
        raise run.error("no_checkpoint_to_evaluate", "no checkpoint input, no `model` and no `endpoint_url`")
    location = {"checkpoint_path": source} if Path(source).exists() else {"hf_model_handle": source}
    name = run.p.endpoint_model or (checkpoint.name if checkpoint else source)
    return location | {"served_model_name": name, "tensor_parallel_size": max(run.gpus, 1)}


def launcher_config(run: StepRun, checkpoint: InputArtifact | None, output_dir: Path) -> dict[str, Any]:
    """The launcher run config for the step's parameters; its executor writes under `output_dir`."""
    if not run.p.evaluator_tasks:
        raise run.error("no_eval_data", "backend nemo_evaluator runs launcher tasks: list their ids in evaluator_tasks")
    params = GENERATION | ({"limit_samples": run.p.limit} if run.p.limit is not None else {})
    if run.p.tokenizer:
        params["extra"] = {"tokenizer": run.p.tokenizer, "tokenizer_backend": "huggingface"}
    key = run.p.api_key_env if run.p.endpoint_url else None
    names = ["HF_TOKEN", *([key] if key else [])]
    evaluation: dict[str, Any] = {
        "nemo_evaluator_config": {"config": {"params": params}},
        "tasks": [{"name": task} for task in run.p.evaluator_tasks],
        "env_vars": {name: f"runtime:{name}" for name in names},  # resolved when the task runs, never written
    }
    config: dict[str, Any] = {"execution": {"output_dir": str(output_dir), "mode": "sequential"}}
    if run.p.endpoint_url:
        endpoint = {"model_id": run.p.endpoint_model, "url": run.p.endpoint_url, "type": run.p.endpoint_type}
        config["target"] = {"api_endpoint": endpoint | ({"api_key_name": key} if key else {})}
    else:
        config["deployment"] = served_checkpoint(run, checkpoint)
    deployment = "none" if run.p.endpoint_url else "vllm"
    return {
        "defaults": [{"execution": "local"}, {"deployment": deployment}, "_self_"],
        **config,
        "evaluation": evaluation,
    }


def settings(config: dict[str, Any]) -> dict[str, Any]:
    """What changes the launcher's scores: tasks, request parameters (limit included), deployment, endpoint type."""
    return {
        "tasks": [task["name"] for task in config["evaluation"]["tasks"]],
        "params": config["evaluation"]["nemo_evaluator_config"]["config"]["params"],
        "deployment": config["defaults"][1]["deployment"],
        "endpoint_type": config.get("target", {}).get("api_endpoint", {}).get("type"),
    }


def launcher_executable(run: StepRun) -> str:
    named = os.environ.get(LAUNCHER_ENV)
    launcher = shutil.which(named or "nemo-evaluator-launcher")
    if not launcher:
        where = f"{LAUNCHER_ENV} = {named} is not executable" if named else f"not on PATH and {LAUNCHER_ENV} is unset"
        raise run.error("framework_cli_not_found", f"nemo-evaluator-launcher {where}")
    return launcher


def wait_for_tasks(output_dir: Path, count: int, timeout_minutes: float | None = None) -> list[Path]:
    """Block until each of `count` tasks has its exit stage (`logs/stage.exit`, what `nemo-evaluator-launcher status`
    reads for the local executor); their directories, or LaunchFailed naming the tasks that failed, or
    evaluator_timeout after `timeout_minutes`."""
    deadline = time.monotonic() + timeout_minutes * 60 if timeout_minutes is not None else None
    while len(exits := sorted(output_dir.glob("*/*/logs/stage.exit"))) < count:
        if deadline is not None and time.monotonic() > deadline:
            running = sorted(p.parent.parent.name for p in output_dir.glob("*/*/logs/stage.*") if p.suffix != ".exit")
            raise step_error(
                "eval/model_eval",
                "evaluator_timeout",
                f"{len(exits)} of {count} tasks ended after {timeout_minutes} minutes (still: {running}); "
                f"logs under {output_dir}",
            )
        time.sleep(POLL_SECONDS)
    codes = {exit_file.parent.parent.name: exit_file.read_text().split()[-1] for exit_file in exits}
    failed = {task: code for task, code in codes.items() if code != "0"}
    if failed:
        raise LaunchFailed(f"NeMo Evaluator tasks failed (exit codes {failed}); logs under {output_dir}")
    return [exit_file.parent.parent for exit_file in exits]


def read_scores(task_dirs: list[Path]) -> dict[str, Any]:
    """Scores {task: {metric: value}} from each task's results.yml (nemo-evaluator's EvaluationResult; a score named
    unlike its metric becomes `<metric>_<score>`). They carry no direction: the launcher's task scores (accuracy,
    pass rate, ...) are higher-is-better."""
    scores = {}
    for task_dir in task_dirs:
        results = yaml.safe_load((task_dir / "artifacts" / "results.yml").read_text())["results"]
        for task, result in (results.get("tasks") or {}).items():
            scores[task] = {
                metric if score == metric else f"{metric}_{score}": value["value"]
                for metric, metric_result in result["metrics"].items()
                for score, value in metric_result["scores"].items()
            }
    return {"scores": scores, "higher_is_better": {task: dict.fromkeys(m, True) for task, m in scores.items()}}


def run_launcher(run: StepRun, config_file: Path, output_dir: Path) -> dict[str, Any]:
    """Run the launcher on `config_file`, wait for its tasks, copy their results.yml next to the config; the scores."""
    run.launch([launcher_executable(run), "run", "--config", str(config_file)], {})
    task_dirs = wait_for_tasks(output_dir, len(run.p.evaluator_tasks), run.p.timeout_minutes)
    for task_dir in task_dirs:
        target = config_file.parent / "nemo_evaluator" / task_dir.name
        target.mkdir(parents=True)
        shutil.copy2(task_dir / "artifacts" / "results.yml", target / "results.yml")
    return read_scores(task_dirs)
