"""Job backend of the Megatron-Bridge training steps: build the ConfigContainer from the spec's training record and
run Megatron-Bridge's `finetune` (SFT, LoRA) or `pretrain` with its GPT forward step, under torchrun
(nemotron_assets.job starts it over the node's GPUs).

Each optimizer step's loss is reported to Dagster over Pipes by the last pipeline rank, and on GPUs the peak GPU
memory at the end (outside Dagster Pipes is a no-op); that rank writes training_log.json (losses; tokens/s over the
steps after the first, counting real tokens of the bins) into the work directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import traceback
from pathlib import Path
from typing import Any

from nemotron_assets.job import JobError, JobSpec, report_peak_gpu_memory
from nemotron_assets.tracking import record_active_mlflow_run


def run(job: JobSpec) -> None:
    spec = job.args
    os.environ.setdefault("UB_SKIPMC", "1")  # Transformer Engine's userbuffers without NVLink multicast
    from nemotron_assets.steps.megatron_bridge import no_te

    no_te.import_bridge()
    from dagster_pipes import open_dagster_pipes
    from megatron.bridge.training.finetune import finetune
    from megatron.bridge.training.gpt_step import forward_step
    from megatron.bridge.training.pretrain import pretrain

    from nemotron_assets.steps.megatron_bridge.config import training_config

    reporting = int(os.environ.get("RANK", "0")) == int(os.environ.get("WORLD_SIZE", "1")) - 1
    with open_dagster_pipes() if reporting else contextlib.nullcontext() as pipes:
        log = LossLog(spec, pipes)
        config = training_config(spec)
        entry = pretrain if spec["mode"] == "pretrain" else finetune
        started = time.perf_counter()
        try:
            entry(config, log.wrap(forward_step))
        except Exception as e:
            named = userbuffer_failure(e)
            if named is None:
                raise
            raise named from e
        seconds = time.perf_counter() - started
        report_peak_gpu_memory(pipes)  # that rank's own once `pretrain` has destroyed the process group it made
        if reporting:
            (Path(job.work_dir) / "training_log.json").write_text(json.dumps(log.summary(seconds)))
            record_active_mlflow_run(job.work_dir)


def userbuffer_failure(error: Exception) -> JobError | None:
    """transformer_engine_userbuffer_failure: the error was raised while Transformer Engine set up its userbuffers
    (inside its `initialize_ub`), which fails on fabrics without the multicast or the NVLink it expects."""
    if any(frame.name == "initialize_ub" for frame in traceback.extract_tb(error.__traceback__)):
        return JobError("transformer_engine_userbuffer_failure", f"{type(error).__name__}: {error}")
    return None


class LossLog:
    """Collects the loss of every microbatch the forward step's loss function reports, per optimizer step."""

    def __init__(self, spec: dict[str, Any], pipes):
        self.spec, self.pipes = spec, pipes
        self.losses: list[float] = []
        self.times: list[float] = []
        self.per_step = spec["train"]["global_batch_size"] // spec["train"]["micro_batch_size"]
        self.pending: list[float] = []
        self.world = int(os.environ.get("WORLD_SIZE", "1"))

    def wrap(self, forward_step):
        def step(state, data_iterator, model, return_schedule_plan: bool = False):
            output, loss_function = forward_step(state, data_iterator, model, return_schedule_plan)

            def loss(*args, **kwargs):
                result = loss_function(*args, **kwargs)
                reported = result[-1].get("lm loss")
                if reported is not None:
                    self.record(float(reported[0] / reported[1]) if reported.numel() == 2 else float(reported))
                return result

            return output, loss

        return step

    def record(self, value: float) -> None:
        self.pending.append(value)
        data_parallel = max(self.world // self._model_parallel(), 1)
        if len(self.pending) * data_parallel >= self.per_step:
            self.losses.append(sum(self.pending) / len(self.pending))
            self.times.append(time.perf_counter())
            self.pending = []
            if self.pipes is not None:
                self.pipes.log.info(f"step {len(self.losses)}: loss {self.losses[-1]:.4f}")

    def _model_parallel(self) -> int:
        p = self.spec["parallel"]
        return p["tensor_model_parallel_size"] * p["pipeline_model_parallel_size"] * p["context_parallel_size"]

    def summary(self, seconds: float) -> dict[str, Any]:
        """Losses, and tokens/s over the steps after the first (which includes compilation and warm-up)."""
        train, data = self.spec["train"], self.spec["dataset"]
        per_bin = data["tokens"] / data["bins"] if data.get("bins") else self.spec["seq_length"]
        timed = self.times[-1] - self.times[0] if len(self.times) > 1 else None
        tokens = (len(self.times) - 1) * train["global_batch_size"] * per_bin
        return {
            "steps": len(self.losses),
            "first_loss": self.losses[0] if self.losses else None,
            "last_loss": self.losses[-1] if self.losses else None,
            "losses": [round(x, 5) for x in self.losses],
            "train_seconds": round(seconds, 3),
            "timed_steps": max(len(self.times) - 1, 0),
            "tokens_per_second": round(tokens / timed, 1) if timed else None,
            "tokens_per_step": round(train["global_batch_size"] * per_bin, 1),
        }
