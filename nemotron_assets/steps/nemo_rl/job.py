"""Job backend of the NeMo-RL steps, in the nemo-rl image: the step's NeMo-RL config written as nemo_rl.yaml into
the work directory, then the step's script (SFT checkpoint export, Ray, NeMo-RL's example entry) run by bash with
CONFIG naming that file. The spec's args: config, script."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from nemotron_assets.job import JobSpec


def run(spec: JobSpec) -> None:
    config = Path(spec.work_dir) / "nemo_rl.yaml"
    config.write_text(yaml.safe_dump(spec.args["config"], sort_keys=False))
    os.execvpe("bash", ["bash", "-c", spec.args["script"]], os.environ | {"CONFIG": str(config)})
