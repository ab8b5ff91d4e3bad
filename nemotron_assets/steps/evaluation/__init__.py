"""Evaluation: eval/model_eval with lm-evaluation-harness or NeMo Evaluator Launcher."""
