"""eval/model_eval: score a model with lm-evaluation-harness on task files the project ships, or have NeMo Evaluator
Launcher score it.

Tasks follow the data the stage consumes: an MCQ benchmark in the BYOB parquet schema (`nemotron_mcq`: accuracy),
held-out chat records (`nemotron_chat_loss`: reply NLL per byte, comparable across tokenizers). The model is a
consumed HF checkpoint, a LoRA adapter on its recorded base, the `model` parameter (e.g. the base model before a
training stage), or an OpenAI-compatible endpoint (`endpoint_url`): a completions endpoint returns log-probs and
runs the same tasks; a chat endpoint only generates, so the MCQ is asked generatively (`nemotron_mcq_gen`). With
`backend = nemo_evaluator` the step writes and runs a NeMo Evaluator Launcher config instead (`nemo_evaluator.py`).
The artifact holds the scores, the exact settings, what was evaluated, the task files and the harness's own
results. An API key is only ever named (`api_key_env`): its value reaches the child process's environment, nothing
else.
"""

from __future__ import annotations

import json
import os
import shutil
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

from nemotron_assets.artifacts.files import HELD_OUT, data_files, read_provenance
from nemotron_assets.paths import PACKAGE_DIR
from nemotron_assets.steps import InputArtifact, StepResult, StepRun
from nemotron_assets.steps.evaluation import nemo_evaluator

TASK_DIR = PACKAGE_DIR / "eval_tasks"
DATA_SUFFIXES = {"mcq_benchmark_parquet": (".parquet",), "training_jsonl": (".jsonl",)}
LOGPROB_TASKS = {  # consumed type -> (task name, task file), scored by log-likelihood: hf and completions endpoints
    "mcq_benchmark_parquet": ("nemotron_mcq", "mcq.yaml"),
    "training_jsonl": ("nemotron_chat_loss", "chat_loss.yaml"),
}
CHAT_TASKS = {"mcq_benchmark_parquet": ("nemotron_mcq_gen", "mcq_gen.yaml")}  # generation only: chat endpoints
ENDPOINT_MODELS = {"chat": "local-chat-completions", "completions": "local-completions"}  # lm-eval model types
ROUTES = {"chat": "/chat/completions", "completions": "/completions"}  # chat first: both end in /completions
RESULTS, SETTINGS, CHECKPOINT = "results.json", "settings.json", "checkpoint.json"


def write_tasks(run: StepRun, directory: Path, tasks: dict[str, tuple[str, str]]) -> list[str]:
    """Concrete task files for the consumed data, in `directory`, from the `tasks` the model can answer; returns the
    task names."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy2(TASK_DIR / "utils.py", directory / "utils.py")
    names = []
    for port, suffixes in DATA_SUFFIXES.items():
        if port not in run.inputs:
            continue
        if port not in tasks:
            raise run.error("wrong_endpoint_type", f"{port} is scored by log-likelihood; a chat endpoint has none")
        name, template = tasks[port]
        files = [run.paths.to_job(f) for f in data_files(run.input(port).path, suffixes, HELD_OUT)]
        text = (TASK_DIR / template).read_text().replace('"@DATA_FILES@"', json.dumps(files))
        (directory / template).write_text(text)
        names.append(name)
    return names


def consumed_checkpoint(run: StepRun) -> InputArtifact | None:
    return next((run.input(t) for t in ("checkpoint_hf", "checkpoint_lora") if t in run.inputs), None)


def checkpoint_record(checkpoint: InputArtifact) -> dict[str, Any]:
    return {
        "name": checkpoint.name,
        "type": checkpoint.type,
        "path": str(checkpoint.path),
        "version": checkpoint.version,
    }


def local_model(run: StepRun) -> tuple[str, dict[str, Any]]:
    """lm-eval hf model_args for the checkpoint under evaluation, and a record of what it is."""
    dtype = f"dtype={run.p.dtype}"
    checkpoint = consumed_checkpoint(run)
    if checkpoint is None:
        if not run.p.model:
            raise run.error("no_checkpoint_to_evaluate", "no checkpoint input and no `model` parameter")
        return f"pretrained={run.paths.name(run.p.model)},{dtype}", {"model": run.p.model}
    record = checkpoint_record(checkpoint)
    if (checkpoint.path / "hf_quant_config.json").exists():
        raise run.error("quantized_checkpoint_needs_endpoint", f"{checkpoint.name} is a ModelOpt-quantized export")
    if checkpoint.type == "checkpoint_lora":
        base = read_provenance(checkpoint.path)["base_model"]["name_or_path"]
        pretrained, peft = run.paths.name(base), run.paths.to_job(checkpoint.path)
        return f"pretrained={pretrained},peft={peft},{dtype}", record | {"base_model": base}
    return f"pretrained={run.paths.to_job(checkpoint.path)},{dtype}", record


def endpoint_record(run: StepRun) -> dict[str, Any]:
    """What an endpoint evaluation scores: URL, served model id, endpoint type (never the key), and the consumed
    checkpoint, if any, as what the endpoint serves."""
    url, kind = run.p.endpoint_url, run.p.endpoint_type
    route = next((route for route, suffix in ROUTES.items() if url.rstrip("/").endswith(suffix)), None)
    if route not in (None, kind):
        raise run.error("wrong_endpoint_type", f"endpoint_type = {kind}, but {url} is {route}")
    if not run.p.endpoint_model:
        raise run.error("no_checkpoint_to_evaluate", "endpoint_url is set but not endpoint_model, the served model id")
    record = run.p.model_dump(include={"endpoint_url", "endpoint_model", "endpoint_type"})
    checkpoint = consumed_checkpoint(run)
    return record | ({"serves": checkpoint_record(checkpoint)} if checkpoint else {})


def endpoint_model(run: StepRun) -> tuple[str, dict[str, Any]]:
    """lm-eval model_args for the OpenAI-compatible endpoint, and a record of what it serves."""
    record = endpoint_record(run)
    args = f"model={run.p.endpoint_model},base_url={run.p.endpoint_url}"
    if run.p.endpoint_type == "chat":
        return args, record
    tokenizer = run.p.tokenizer
    if not tokenizer:
        raise run.error("missing_tokenizer_for_logprobs", "a completions endpoint is scored by log-likelihood")
    return f"{args},tokenizer={tokenizer},tokenizer_backend=huggingface", record | {"tokenizer": tokenizer}


def api_key_env(run: StepRun) -> dict[str, str]:
    """The key in the variable `api_key_env` names, as OPENAI_API_KEY (what lm-eval's local-* models send), for the
    child process's environment only."""
    name = run.p.api_key_env
    if not name:
        return {}
    if not os.environ.get(name):
        raise run.error("api_key_not_set", f"api_key_env = {name}, which is not set in the environment")
    return {"OPENAI_API_KEY": os.environ[name]}


def lm_eval_arguments(
    run: StepRun, model: str, model_args: str, tasks: list[str], tasks_dir: Path, output: Path, chat_template: bool
) -> list[str | Path]:
    command: list[str | Path] = ["--model", model, "--model_args", model_args]
    command += ["--tasks", ",".join(tasks), "--include_path", tasks_dir, "--output_path", output]
    command += ["--device", "cuda" if run.gpus else "cpu", "--batch_size", str(run.p.batch_size)]
    command += ["--num_fewshot", str(run.p.num_fewshot), "--seed", str(run.p.seed)]
    if chat_template:
        command.append("--apply_chat_template")
    if run.p.limit is not None:
        command += ["--limit", str(run.p.limit)]
    if run.tracking:
        command += run.tracking.lm_eval_args(run.paths.to_job(run.tracking.directory))
    return command


def read_scores(output: Path) -> tuple[dict[str, Any], Path]:
    """Scores {task: {metric: value}} and their directions from lm-eval's results file (metric keys lose their
    ',<filter>' suffix)."""
    results_file = max(output.rglob("results_*.json"))
    document = json.loads(results_file.read_text())
    results = document["results"]
    scores = {
        task: {
            k.split(",")[0]: v
            for k, v in metrics.items()
            if isinstance(v, int | float) and "stderr" not in k and k != "sample_len"
        }
        for task, metrics in results.items()
    }
    return {"scores": scores, "higher_is_better": document["higher_is_better"]}, results_file


def publish(
    run: StepRun, results: dict[str, Any], settings: dict[str, Any], evaluated: dict[str, Any], wandb_logged: bool
) -> StepResult:
    """results.json, settings.json and checkpoint.json into the artifact; the scores as stats, logged to the named
    tracker (`wandb_logged`: lm-eval logged them to W&B itself)."""
    for name, document in ((RESULTS, results), (SETTINGS, settings), (CHECKPOINT, evaluated)):
        (run.output_dir / name).write_text(json.dumps(document, indent=1, sort_keys=True))
    scores = results["scores"]
    stats = {f"{task}/{metric}": value for task, metrics in scores.items() for metric, value in metrics.items()}
    if run.tracking:
        run.tracking.log_evaluation(run.work_dir, settings, stats, wandb_logged)
    provenance = {"evaluated": evaluated, "eval_settings": settings} | run.tracking_provenance()
    return StepResult(stats, provenance)


def evaluate_with_lm_eval(run: StepRun) -> StepResult:
    model = ENDPOINT_MODELS[run.p.endpoint_type] if run.p.endpoint_url else "hf"
    tasks = write_tasks(run, run.work_dir / "tasks", CHAT_TASKS if model == ENDPOINT_MODELS["chat"] else LOGPROB_TASKS)
    if not tasks:
        raise run.error("no_eval_data", "consume an mcq_benchmark_parquet and/or held-out chat training_jsonl")
    model_args, evaluated = endpoint_model(run) if run.p.endpoint_url else local_model(run)
    env = api_key_env(run) | run.tracking_env()
    chat_template = run.p.apply_chat_template or model == ENDPOINT_MODELS["chat"]  # chat endpoints take messages
    output = run.work_dir / "lm_eval"
    shutil.rmtree(output, ignore_errors=True)
    arguments = lm_eval_arguments(run, model, model_args, tasks, run.work_dir / "tasks", output, chat_template)
    run.launch_job("lm_eval", {"argv": arguments}, env=env)
    results, results_file = read_scores(output)

    scoring = "endpoint_type" if run.p.endpoint_url else "dtype"
    settings = run.p.model_dump(include={"limit", "num_fewshot", "batch_size", "seed", scoring}) | {
        "harness": f"lm-eval {version('lm_eval')}",
        "backend": model,
        "apply_chat_template": chat_template,
        "tasks": tasks,
    }
    shutil.copy2(results_file, run.output_dir / "lm_eval_results.json")
    shutil.copytree(run.work_dir / "tasks", run.output_dir / "tasks")
    return publish(run, results, settings, evaluated, wandb_logged=True)


def evaluate_with_launcher(run: StepRun) -> StepResult:
    """Write the NeMo Evaluator Launcher config into the artifact, run the launcher on it, collect its scores."""
    checkpoint = consumed_checkpoint(run)
    if run.p.endpoint_url:
        evaluated = endpoint_record(run)
        api_key_env(run)  # api_key_not_set now, not as a 401 inside the evaluation container
    else:
        evaluated = checkpoint_record(checkpoint) if checkpoint else {"model": run.p.model}
    output = run.work_dir / "nemo_evaluator"
    shutil.rmtree(output, ignore_errors=True)
    config = nemo_evaluator.launcher_config(run, checkpoint, output)
    config_file = run.output_dir / nemo_evaluator.CONFIG
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    results = nemo_evaluator.run_launcher(run, config_file, output)
    settings = nemo_evaluator.settings(config) | {"harness": "nemo-evaluator-launcher", "backend": "nemo_evaluator"}
    return publish(run, results, settings, evaluated, wandb_logged=False)


def run(run: StepRun) -> StepResult:
    if "checkpoint_megatron" in run.inputs:
        raise run.error(
            "bad_megatron_checkpoint_path", "scoring Megatron checkpoints needs convert/megatron_to_hf first"
        )
    run.work_dir.mkdir(parents=True, exist_ok=True)
    if run.p.backend == "nemo_evaluator":
        return evaluate_with_launcher(run)
    return evaluate_with_lm_eval(run)
