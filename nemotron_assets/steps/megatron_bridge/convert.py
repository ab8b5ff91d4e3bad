"""convert/hf_to_megatron and convert/megatron_to_hf: Megatron-Bridge's AutoBridge in a job
(convert_job), with fidelity as the gate.

hf_to_megatron writes a Megatron run directory (latest_checkpointed_iteration.txt + iter_0000000); the checkpoint
it saved is exported back to HF and must give the source's logits within `tolerance` (relative to the largest
logit), or nothing is published. megatron_to_hf reads one concrete iter_NNNNNNN directory (a run directory given as
`megatron_path` is refused; an upstream artifact is resolved through its tracker and the directory recorded) and
its HF export must reproduce the Megatron model's logits. One process (`distributed` false, or no GPUs) or torchrun
over the node's GPUs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nemotron_assets.artifacts import validate
from nemotron_assets.artifacts.checkpoints import MEGATRON_ITERATION, megatron_iteration_dir
from nemotron_assets.artifacts.files import overlaps, read_provenance
from nemotron_assets.errors import NamedError
from nemotron_assets.steps import StepResult, StepRun

HF_CONFIG = "hf_config"  # provenance: the HF model whose config and tokenizer a Megatron checkpoint has
# Files that mark a directory as a training run, optimizer state or adapter, not a clean HF model.
NOT_CLEAN = ("adapter_config.json", "optimizer.pt", "trainer_state.json", "latest_checkpointed_iteration.txt")


def hf_to_megatron(run: StepRun) -> StepResult:
    source = hf_source(run)
    unclean = [name for name in NOT_CLEAN if (source / name).exists()]
    if unclean:
        raise run.error("source_not_clean_hf_checkpoint", f"{source} holds {', '.join(unclean)}")
    try:
        validate(source, "checkpoint_hf")
    except NamedError as e:
        raise run.error("source_not_clean_hf_checkpoint", e.detail) from None
    if overlaps(run.output_dir, source):
        raise run.error("output_path_overlaps_source", f"{run.output_dir} overlaps the source {source}")
    arguments = {"direction": "import", "hf": source, "megatron": run.output_dir, "dtype": run.p.torch_dtype}
    report = convert(run, arguments)
    relative = gate(run, report, "round_trip", "round_trip_logits_mismatch", "HF -> Megatron -> HF", run.p.tolerance)
    megatron = gate(
        run,
        report,
        "megatron",
        "megatron_logits_mismatch",
        "The Megatron model",
        run.p.megatron_tolerance,
        "megatron_tolerance",
    )
    stats = report | {"relative_round_trip_difference": relative, "relative_megatron_difference": megatron}
    return StepResult(stats, {"converted_from": {"hf": str(source)}, HF_CONFIG: str(source)})


def megatron_to_hf(run: StepRun) -> StepResult:
    checkpoint = megatron_source(run)
    hf = hf_config_source(run)
    if overlaps(run.output_dir, checkpoint.parent):
        raise run.error("output_path_overlaps_source", f"{run.output_dir} overlaps {checkpoint.parent}")
    arguments = {"direction": "export", "hf": hf, "megatron": checkpoint, "out": run.output_dir, "dtype": "float32"}
    report = convert(run, arguments | {"strict": run.p.strict, "progress": run.p.show_progress})
    relative = gate(run, report, "export", "export_logits_mismatch", "Megatron -> HF export", run.p.tolerance)
    iteration = int(MEGATRON_ITERATION.fullmatch(checkpoint.name).group(1))
    stats = report | {"relative_export_difference": relative, "iteration": iteration}
    return StepResult(stats, {"exported_from": {"megatron": str(checkpoint), "iteration": iteration, "hf": str(hf)}})


def gate(
    run: StepRun, report: dict[str, Any], kind: str, error: str, what: str, tolerance: float, name: str = "tolerance"
) -> float:
    """The `kind` logit difference relative to the largest logit; the named error when over `tolerance` (the
    parameter `name`)."""
    difference = report[f"{kind}_logit_difference"]
    relative = difference / report["largest_logit"]
    if relative > tolerance:
        raise run.error(
            error,
            f"{what} changed the logits by {difference:.3g} ({relative:.3g} of the largest), over {name} {tolerance}",
        )
    return relative


def hf_source(run: StepRun) -> Path:
    """The HF model to import: the consumed checkpoint_hf, else hf_model_id as a local directory."""
    if "checkpoint_hf" in run.inputs:
        return run.input("checkpoint_hf").path
    source = Path(run.p.hf_model_id)
    if not source.is_dir():
        raise run.error("source_not_clean_hf_checkpoint", f"{source} is not a local HF model directory")
    return source


def hf_config_source(run: StepRun) -> Path:
    """The HF directory whose config and tokenizer match the checkpoint: hf_model_id, or when that is empty the one
    the step that made the checkpoint recorded (HF_CONFIG in its provenance: hf_to_megatron's source, distill's
    student)."""
    artifact = run.inputs.get("checkpoint_megatron")
    recorded = artifact and (read_provenance(artifact.path) or {}).get(HF_CONFIG)
    if not (run.p.hf_model_id or recorded):
        raise run.error("missing_hf_config_or_tokenizer", "hf_model_id is empty and the checkpoint records no HF model")
    hf = Path(run.p.hf_model_id or recorded)
    try:
        validate(hf, "checkpoint_hf")
    except NamedError as e:
        raise run.error("missing_hf_config_or_tokenizer", e.detail) from None
    return hf


def megatron_source(run: StepRun) -> Path:
    """The concrete iter_NNNNNNN directory to export, complete on disk."""
    given = run.p.megatron_path
    if given and not MEGATRON_ITERATION.fullmatch(Path(given).name):
        raise run.error("bad_megatron_checkpoint_path", f"{given} is not an iter_NNNNNNN directory")
    if not given and "checkpoint_megatron" not in run.inputs:
        raise run.error("bad_megatron_checkpoint_path", "no megatron_path and no checkpoint_megatron input")
    path = Path(given) if given else run.input("checkpoint_megatron").path
    try:
        validate(path, "checkpoint_megatron")
        return megatron_iteration_dir(path)
    except NamedError as e:
        name = "incomplete_or_async_checkpoint" if e.name == "incomplete_megatron_checkpoint" else e.name
        if name == "artifact_missing":
            name = "bad_megatron_checkpoint_path"
        raise run.error(name, e.detail) from None


def convert(run: StepRun, arguments: dict[str, Any]) -> dict[str, Any]:
    """Run the conversion job (one process, or torchrun over the node's GPUs when `distributed`); its report."""
    arguments |= {"tp": run.p.tp, "pp": run.p.pp, "ep": run.p.ep, "etp": run.p.etp, "trust": run.p.trust_remote_code}
    nproc = min(run.p.torchrun.nproc_per_node, run.gpus) if run.p.distributed and run.gpus else 1
    report = run.work_dir / "report.json"
    report.unlink(missing_ok=True)
    run.launch_job("megatron_bridge.convert", arguments, nproc_per_node=nproc)
    return json.loads(report.read_text())
