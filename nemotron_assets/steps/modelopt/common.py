"""What the ModelOpt steps share: the target GPU from the hardware profile, input/output overlap checks, the
calibration texts drawn from training data, and running a task of the `modelopt` job backend."""

from __future__ import annotations

import json
from typing import Any

from nemotron_assets.artifacts.files import TRAIN, data_files
from nemotron_assets.artifacts.jsonl import CORPUS_SHAPES, RecordStream
from nemotron_assets.steps import StepRun

FP8 = ("fp8", "fp8_blockwise", "w4a8_awq")
INT = ("int8_sq", "int4_awq")
HF_EXPORT = "hf"  # the optional HF export's directory inside a Megatron artifact (quantize, distill)
SUPPORTED = {"blackwell": (*FP8, *INT, "nvfp4"), "hopper": (*FP8, *INT), "ada": (*FP8, *INT)}  # ModelOpt recipes


def target_gpu(run: StepRun, asked: str | None) -> str | None:
    """The GPU the result is for: the one `asked` for, else the hardware profile's [gpu] model."""
    if asked:
        return asked
    from resources.profile import HardwareProfile  # a Dagster resource: imported only where the profile is read

    gpu = HardwareProfile(name=run.profile).load().gpu
    return gpu.model if gpu else None


def record_text(record: dict[str, Any], tokenizer) -> str:
    """One training record as the text the model sees: chat through its template, preference pairs and RL prompts
    with their preferred answer, plain text as is."""
    if "chosen" in record:
        return f"{record['prompt']}\n{record['chosen']}"
    if "messages" in record:
        return tokenizer.apply_chat_template(record["messages"], tokenize=False)
    prompt = next(record[f] for f in ("prompt", "question", "problem", "input", "text") if record.get(f))
    answer = record.get("answer") or record.get("ground_truth")
    return f"{prompt}\n{answer}" if isinstance(answer, str) else prompt


def training_texts(run: StepRun, tokenizer, limit: int) -> list[str]:
    """Up to `limit` texts from the consumed training_jsonl, in file order."""
    files = data_files(run.input("training_jsonl").path, (".jsonl",), TRAIN)
    stream = RecordStream(files, CORPUS_SHAPES, max_rows=limit)
    return [record_text(record, tokenizer) for record in stream]


def run_task(run: StepRun, task: str, job: dict[str, Any]) -> dict[str, Any]:
    """Run the `modelopt` job backend's `task` on `job` through the step's launcher; return its result.json."""
    result = run.work_dir / "result.json"
    result.unlink(missing_ok=True)
    run.launch_job("modelopt", {"task": task} | job)
    return json.loads(result.read_text())
