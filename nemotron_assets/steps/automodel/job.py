"""Child process of the AutoModel steps: run NeMo AutoModel's recipe and stream progress over Dagster Pipes.

    python -m nemotron_assets.steps.automodel.job --config recipe.yaml            (CPU, one process)
    torchrun --nproc-per-node N -m nemotron_assets.steps.automodel.job --config recipe.yaml   (GPUs)

Rank 0 reports each optimizer step to Dagster (outside Dagster, Pipes is a no-op). A failure is also written to
$NEMOTRON_FAILURE_FILE so the parent can name it (e.g. `oom`) whichever launcher ran the process.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from nemotron_assets.steps.launch import failures_recorded


def main() -> None:
    args = _arguments()
    from nemotron_assets.steps.automodel import cpu

    cpu.apply()
    from dagster_pipes import open_dagster_pipes
    from nemo_automodel.components.config._arg_parser import parse_args_and_load_config
    from nemo_automodel.recipes.llm.train_ft import TrainFinetuneRecipeForNextTokenPrediction

    main_rank = int(os.environ.get("RANK", "0")) == 0
    with open_dagster_pipes() if main_rank else contextlib.nullcontext() as pipes:

        class Recipe(TrainFinetuneRecipeForNextTokenPrediction):
            def log_train_metrics(self, log_data) -> None:
                super().log_train_metrics(log_data)
                if pipes is not None:
                    m = log_data.metrics
                    pipes.log.info(f"step {log_data.step}: loss {m['loss']:.4f}, {m['tps']:.0f} tokens/s")

        with failures_recorded():
            recipe = Recipe(parse_args_and_load_config(args.config))
            recipe.setup()
            recipe.run_train_validation_loop()


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True)
    args = parser.parse_args()
    sys.argv = [sys.argv[0], "--config", args.config]  # the recipe's own parser reads sys.argv
    return args


if __name__ == "__main__":
    main()
