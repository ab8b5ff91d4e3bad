"""The stub harness's output parser: {task: {metric: {score: value}}} from $NEMOTRON_STUB_SCORES as nemo-evaluator's
EvaluationResult."""

import json
import os

from nemo_evaluator.api.api_dataclasses import EvaluationResult, MetricResult, Score, ScoreStats, TaskResult


def parse_output(output_dir: str) -> EvaluationResult:
    tasks = json.loads(os.environ["NEMOTRON_STUB_SCORES"])
    return EvaluationResult(
        tasks={
            task: TaskResult(
                metrics={
                    metric: MetricResult(
                        scores={name: Score(value=v, stats=ScoreStats(count=4)) for name, v in s.items()}
                    )
                    for metric, s in metrics.items()
                }
            )
            for task, metrics in tasks.items()
        }
    )
