"""convert/merge_lora: fold a LoRA adapter into its exact base with peft (in a job: peft.job), and prove the
merge changed nothing.

The adapter must be a PEFT directory (Megatron adapters are not merged here) that no quality gate failed, and the
base given the one the adapter recorded (same content fingerprint). Before saving, the merged model's logits on a
probe text must equal the adapter-on-base logits within `tolerance` (relative to the largest logit).
"""

from __future__ import annotations

import json

from nemotron_assets.artifacts import validate
from nemotron_assets.artifacts.checkpoints import MEGATRON_TRACKER
from nemotron_assets.artifacts.files import overlaps, read_provenance
from nemotron_assets.gates import failed_gate
from nemotron_assets.steps import StepResult, StepRun
from nemotron_assets.steps.automodel.train import base_model_record

PROBE = "The capital of a small country sits on a river, and its merchants trade copper lanterns."
DTYPES = {"float32": "float32", "bfloat16": "bfloat16"}


def run(run: StepRun) -> StepResult:
    adapter, base = run.input("checkpoint_lora"), run.input("checkpoint_hf")
    if run.p.backend == "megatron_bridge" or "checkpoint_megatron" in run.inputs:
        raise run.error("megatron_adapter_merge_unavailable", f"backend {run.p.backend}, inputs {sorted(run.inputs)}")
    if (adapter.path / MEGATRON_TRACKER).exists():
        raise run.error("megatron_adapter_merge_unavailable", f"{adapter.path} is a Megatron adapter checkpoint")
    if not (adapter.path / "adapter_config.json").exists():
        below = sorted(str(c.parent) for c in adapter.path.rglob("adapter_config.json"))
        found = f"; adapter directories below it: {below[:5]}" if below else ", nor below it"
        raise run.error("adapter_config_missing", f"no adapter_config.json in {adapter.path}{found}")
    for name, path in (("adapter", adapter.path), ("base", base.path)):
        if overlaps(run.output_dir, path):
            raise run.error("output_path_overlaps_inputs", f"{run.output_dir} overlaps the {name} {path}")
    if (decision := failed_gate(adapter.path.parent, adapter.version)) is not None:
        raise run.error(
            "adapter_not_validated",
            f"{adapter.name} version {adapter.version} failed its quality gate (tolerance {decision['tolerance']})",
        )
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
    run.launch_job("peft", job | {"dtype": DTYPES[run.p.torch_dtype]})
    report = json.loads(report_file.read_text())
    difference = report["max_logit_difference"]
    relative = difference / report["largest_logit"]
    if relative > run.p.tolerance:
        raise run.error(
            "merge_logits_mismatch",
            f"max |logit difference| {difference:.3g} is {relative:.3g} of the largest |logit|, "
            f"over the tolerance {run.p.tolerance}",
        )
    stats = {
        "max_logit_difference": difference,
        "relative_logit_difference": relative,
        "parameters": report["parameters"],
    }
    lora = read_provenance(adapter.path).get("lora")
    return StepResult(stats, {"merged_from": {"adapter": adapter.version, "base": recorded, "lora": lora}})
