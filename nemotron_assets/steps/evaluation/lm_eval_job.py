"""Job backend of eval/model_eval's lm-evaluation-harness runs: lm-eval's own command line, in the job's image.
The spec's args: argv, the lm-eval arguments (task files and output directory on the storage)."""

from __future__ import annotations

import sys

from nemotron_assets.job import JobSpec


def run(spec: JobSpec) -> None:
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval", *spec.args["argv"]]
    cli_evaluate()
