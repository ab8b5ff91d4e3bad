"""convert/merge_lora: fold a LoRA adapter into its exact base with peft (in a job: peft.job), and prove the
merge changed nothing.

The base given must be the one the adapter recorded (same content fingerprint). Before saving, the merged model's
logits on a probe text must equal the adapter-on-base logits within `tolerance` (relative to the largest logit).
"""

from __future__ import annotations

import json

from nemotron_assets.artifacts import validate
from nemotron_assets.artifacts.files import read_provenance
from nemotron_assets.steps import StepResult, StepRun
from nemotron_assets.steps.automodel.train import base_model_record

PROBE = "The capital of a small country sits on a river, and its merchants trade copper lanterns."
DTYPES = {"float32": "float32", "bfloat16": "bfloat16"}


def run(run: StepRun) -> StepResult:
    p = run.params
    if p["backend"] == "megatron_bridge" or "checkpoint_megatron" in run.inputs:
        raise run.error("adapter_not_validated", "the Megatron-Bridge merge backend is not runnable here yet")
    adapter, base = run.input("checkpoint_lora"), run.input("checkpoint_hf")
    validate(adapter.path, "checkpoint_lora")  # base_not_recorded_for_merge without a recorded base
    recorded = read_provenance(adapter.path)["base_model"]
    given = base_model_record(str(base.path))
    if given["fingerprint"] != recorded["fingerprint"]:
        raise run.error(
            "base_model_mismatch",
            f"adapter {adapter.name} was trained on {recorded['name_or_path']} ({recorded['fingerprint'][:12]}), "
            f"given base {base.name} is {given['fingerprint'][:12]}",
        )
    report_file = run.work_dir / "report.json"
    report_file.unlink(missing_ok=True)
    job = {"base": base.path, "adapter": adapter.path, "output": run.output_dir, "probe": PROBE}
    run.launch_job("peft", job | {"dtype": DTYPES[p["torch_dtype"]]})
    report = json.loads(report_file.read_text())
    difference = report["max_logit_difference"]
    relative = difference / report["largest_logit"]
    if relative > p["tolerance"]:
        raise run.error(
            "merge_logits_mismatch",
            f"max |logit difference| {difference:.3g} is {relative:.3g} of the largest |logit|, "
            f"over the tolerance {p['tolerance']}",
        )
    stats = {
        "max_logit_difference": difference,
        "relative_logit_difference": relative,
        "parameters": report["parameters"],
    }
    lora = read_provenance(adapter.path).get("lora")
    return StepResult(stats, {"merged_from": {"adapter": adapter.version, "base": recorded, "lora": lora}})
