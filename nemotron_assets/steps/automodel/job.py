"""Job backend of the AutoModel steps: NeMo AutoModel's fine-tune recipe on the spec's recipe config, progress over
Dagster Pipes. One process on CPU; under torchrun (nemotron_assets.job) over a node's GPUs. Rank 0 reports each
optimizer step to Dagster, and on GPUs the peak GPU memory over the ranks (outside Dagster, Pipes is a no-op).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
from pathlib import Path

import yaml

from nemotron_assets.job import JobError, JobSpec, report_peak_gpu_memory
from nemotron_assets.tracking import record_active_mlflow_run


def check_scheduler_keys(recipe: dict) -> None:
    """unsupported_scheduler_kwargs: every step_scheduler key must be a parameter of the image's own AutoModel
    StepScheduler (keys move between AutoModel releases), checked before anything is loaded."""
    from nemo_automodel.components.training.step_scheduler import StepScheduler

    unknown = sorted(set(recipe.get("step_scheduler", {})) - set(inspect.signature(StepScheduler).parameters))
    if unknown:
        raise JobError("unsupported_scheduler_kwargs", f"this AutoModel's StepScheduler takes no {unknown}")


def run(spec: JobSpec) -> None:
    from nemotron_assets.steps.automodel import cpu

    cpu.apply()
    from dagster_pipes import open_dagster_pipes
    from nemo_automodel.components.config._arg_parser import parse_args_and_load_config
    from nemo_automodel.recipes.llm.train_ft import TrainFinetuneRecipeForNextTokenPrediction

    config = Path(spec.work_dir) / "recipe.yaml"
    written = config.with_suffix(f".{os.getpid()}")  # every rank writes the same bytes, each atomically
    written.write_text(yaml.safe_dump(spec.args["recipe"], sort_keys=False))
    os.replace(written, config)
    sys.argv = [sys.argv[0], "--config", str(config)]  # the recipe's own parser reads sys.argv
    main_rank = int(os.environ.get("RANK", "0")) == 0
    with open_dagster_pipes() if main_rank else contextlib.nullcontext() as pipes:

        class Recipe(TrainFinetuneRecipeForNextTokenPrediction):
            def log_train_metrics(self, log_data) -> None:
                super().log_train_metrics(log_data)
                if pipes is not None:
                    m = log_data.metrics
                    pipes.log.info(f"step {log_data.step}: loss {m['loss']:.4f}, {m['tps']:.0f} tokens/s")

        check_scheduler_keys(spec.args["recipe"])
        recipe = Recipe(parse_args_and_load_config(str(config)))
        recipe.setup()
        recipe.run_train_validation_loop()
        report_peak_gpu_memory(pipes)  # the max over the ranks: AutoModel's process group is still up
        if main_rank:
            record_active_mlflow_run(spec.work_dir)
