"""eval/model_eval: score a checkpoint with lm-evaluation-harness (hf backend) on task files the project ships.

Tasks follow the data the stage consumes: an MCQ benchmark in the BYOB parquet schema (`nemotron_mcq`: accuracy),
held-out chat records (`nemotron_chat_loss`: reply NLL per byte, comparable across tokenizers). The checkpoint is
a consumed HF checkpoint, a LoRA adapter on its recorded base, or (no checkpoint input) the `model` parameter,
e.g. the base model before a training stage. The artifact holds the scores, the exact settings, the checkpoint
evaluated, the task files and lm-eval's own results.
"""

from __future__ import annotations

import json
import shutil
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from nemotron_assets.artifacts.files import data_files, read_provenance
from nemotron_assets.steps import StepResult, StepRun

TASK_DIR = Path(__file__).resolve().parent.parent / "eval_tasks"
TASKS = {  # consumed type -> (task name, task file, data file suffixes)
    "mcq_benchmark_parquet": ("nemotron_mcq", "mcq.yaml", (".parquet",)),
    "training_jsonl": ("nemotron_chat_loss", "chat_loss.yaml", (".jsonl",)),
}
RESULTS, SETTINGS, CHECKPOINT = "results.json", "settings.json", "checkpoint.json"


def write_tasks(run: StepRun, directory: Path) -> list[str]:
    """Concrete task files for the consumed data, in `directory`; returns the task names."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy2(TASK_DIR / "utils.py", directory / "utils.py")
    names = []
    for port, (name, template, suffixes) in TASKS.items():
        if port in run.inputs:
            files = [str(f) for f in data_files(run.input(port).path, suffixes)]
            text = (TASK_DIR / template).read_text().replace('"@DATA_FILES@"', json.dumps(files))
            (directory / template).write_text(text)
            names.append(name)
    return names


def evaluated_model(run: StepRun) -> tuple[str, dict[str, Any]]:
    """lm-eval model_args for the checkpoint under evaluation, and a record of what it is."""
    checkpoint = next((run.input(t) for t in ("checkpoint_hf", "checkpoint_lora") if t in run.inputs), None)
    if checkpoint is None:
        if not run.params["model"]:
            raise run.error("no_checkpoint_to_evaluate", "no checkpoint input and no `model` parameter")
        return f"pretrained={run.params['model']}", {"model": run.params["model"]}
    record = {
        "name": checkpoint.name,
        "type": checkpoint.type,
        "path": str(checkpoint.path),
        "version": checkpoint.version,
    }
    if checkpoint.type == "checkpoint_lora":
        base = read_provenance(checkpoint.path)["base_model"]["name_or_path"]
        return f"pretrained={base},peft={checkpoint.path}", record | {"base_model": base}
    return f"pretrained={checkpoint.path}", record


def lm_eval_command(run: StepRun, model_args: str, tasks: list[str], tasks_dir: Path, output: Path) -> list[str]:
    p = run.params
    command = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"{model_args},dtype={p['dtype']}"]
    command += ["--tasks", ",".join(tasks), "--include_path", str(tasks_dir), "--output_path", str(output)]
    command += ["--device", "cuda" if run.gpus else "cpu", "--batch_size", str(p["batch_size"])]
    command += ["--num_fewshot", str(p["num_fewshot"]), "--seed", str(p["seed"])]
    if p["apply_chat_template"]:
        command.append("--apply_chat_template")
    if p["limit"] is not None:
        command += ["--limit", str(p["limit"])]
    return command


def read_scores(output: Path) -> tuple[dict[str, Any], Path]:
    """Scores {task: {metric: value}} and their directions from lm-eval's results file (metric keys lose their
    ',none' filter suffix)."""
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


def run(run: StepRun) -> StepResult:
    if "checkpoint_megatron" in run.inputs:
        raise run.error(
            "bad_megatron_checkpoint_path", "scoring Megatron checkpoints needs convert/megatron_to_hf first"
        )
    run.work_dir.mkdir(parents=True, exist_ok=True)
    tasks = write_tasks(run, run.work_dir / "tasks")
    if not tasks:
        raise run.error("no_eval_data", "consume an mcq_benchmark_parquet and/or held-out chat training_jsonl")
    model_args, checkpoint = evaluated_model(run)
    output = run.work_dir / "lm_eval"
    shutil.rmtree(output, ignore_errors=True)
    run.launch(lm_eval_command(run, model_args, tasks, run.work_dir / "tasks", output), {})
    results, results_file = read_scores(output)
    scores = results["scores"]

    settings = {
        key: run.params[key] for key in ("limit", "num_fewshot", "batch_size", "apply_chat_template", "seed", "dtype")
    } | {"harness": f"lm-eval {version('lm_eval')}", "backend": "hf", "tasks": tasks}
    (run.output_dir / RESULTS).write_text(json.dumps(results, indent=1, sort_keys=True))
    (run.output_dir / SETTINGS).write_text(json.dumps(settings, indent=1, sort_keys=True))
    (run.output_dir / CHECKPOINT).write_text(json.dumps(checkpoint, indent=1, sort_keys=True))
    shutil.copy2(results_file, run.output_dir / "lm_eval_results.json")
    shutil.copytree(run.work_dir / "tasks", run.output_dir / "tasks")
    stats = {f"{task}/{metric}": value for task, metrics in scores.items() for metric, value in metrics.items()}
    return StepResult(stats, {"evaluated": checkpoint, "eval_settings": settings})
