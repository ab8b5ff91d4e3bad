"""Write <output_dir>/results.yml with nemo-evaluator's own `evaluate`, as an evaluation container does, through the
stub harness beside this file (client mode: no adapter server, no requests). Run with .venv-evaluator's python:
write_results.py OUTPUT_DIR TASK SCORES_JSON, SCORES_JSON = {task: {metric: {score: value}}}."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ["NEMO_EVALUATOR_TELEMETRY_LEVEL"] = "0"

from nemo_evaluator.api.api_dataclasses import ApiEndpoint, EvaluationConfig, EvaluationTarget  # noqa: E402
from nemo_evaluator.core.evaluate import evaluate  # noqa: E402

output_dir, task, os.environ["NEMOTRON_STUB_SCORES"] = sys.argv[1:]
endpoint = {"url": "http://127.0.0.1:9/v1/chat/completions", "model_id": "m", "type": "chat"}
target = EvaluationTarget(api_endpoint=ApiEndpoint(**endpoint, adapter_config={"mode": "client"}))
evaluate(EvaluationConfig(type=task, output_dir=output_dir), target)
