"""sft/megatron_bridge, peft/megatron_bridge and pretrain/megatron_bridge: the cross-step invariants checked before
anything is launched, then Megatron-Bridge's own training loop under torchrun (train_job).

The launch spec (training.json) is a plain record of the step's parameters and inputs; the child turns it into
Megatron-Bridge's ConfigContainer (config) and runs `finetune` or `pretrain`. Packed Parquet bins
are handed to Megatron-Bridge 0.3.1 in its own packed-sequence format (.npy of {input_ids, loss_mask,
seq_start_id}: the same bins, loss masks already shifted). Checkpoints go to the work directory (a retried run
resumes from them); the published artifact is the Megatron run directory (tracker + iter_* directories).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from nemotron_assets.artifacts import validate
from nemotron_assets.artifacts.binidx import BLEND_FILE, read_blend
from nemotron_assets.artifacts.checkpoints import MEGATRON_TRACKER, megatron_iteration_dir
from nemotron_assets.artifacts.files import link_or_copy, overlaps, read_provenance
from nemotron_assets.digests import content_digest
from nemotron_assets.errors import NamedError
from nemotron_assets.steps import StepResult, StepRun
from nemotron_assets.steps.data_prep.chat_template import ChatTemplate
from nemotron_assets.steps.data_prep.tokenizer import TokenizerUnavailable, load_tokenizer
from nemotron_assets.steps.launch import as_path

MODES = {"sft/megatron_bridge": "sft", "peft/megatron_bridge": "peft", "pretrain/megatron_bridge": "pretrain"}


def run(run: StepRun) -> StepResult:
    mode = MODES[run.step.id]
    world = world_size(run)
    check_batch_shape(run, world)
    run.work_dir.mkdir(parents=True, exist_ok=True)
    spec = launch_spec(run, mode) | {"world_size": world}
    run.launch_job("megatron_bridge.train", spec, max(run.gpus, 1), torchrun=True, env=run.tracking_env())
    return publish(run, spec["checkpoint"]["save"], spec)


def has_error(run: StepRun, name: str) -> bool:
    return any(error.name == name for error in run.step.errors)


def world_size(run: StepRun) -> int:
    """GPUs across the profile's nodes (this node's GPUs where the profile cannot be read, e.g. a bare GPU image)."""
    try:
        from resources.profile import load_profile

        return load_profile(run.profile).nodes * run.gpus
    except (ImportError, ValueError):
        return run.gpus


def check_batch_shape(run: StepRun, world: int) -> None:
    """insufficient_hardware: the run has fewer GPUs than one model replica's TP x PP x CP; bad_parallel_batch_shape:
    the GPUs must divide into replicas, the global batch into data-parallel ranks x micro batches, and packed
    sequences need micro batch 1."""
    model = run.p.model
    tp, pp, cp = model.tensor_model_parallel_size, model.pipeline_model_parallel_size, model.context_parallel_size
    model_parallel = tp * pp * cp
    if world < model_parallel:
        raise run.error("insufficient_hardware", f"TP{tp} x PP{pp} x CP{cp} needs {model_parallel} GPUs; {world} here")
    if world % model_parallel:
        raise run.error("bad_parallel_batch_shape", f"{world} GPUs do not divide into TP{tp} x PP{pp} x CP{cp}")
    data_parallel, micro, batch = world // model_parallel, run.p.train.micro_batch_size, run.p.train.global_batch_size
    if batch % (data_parallel * micro):
        raise run.error(
            "bad_parallel_batch_shape",
            f"global batch {batch} is not a multiple of data parallel {data_parallel} x micro batch {micro}",
        )
    if run.step.id != "pretrain/megatron_bridge" and micro != 1:
        raise run.error("bad_parallel_batch_shape", f"packed sequences need train.micro_batch_size 1, not {micro}")


def launch_spec(run: StepRun, mode: str) -> dict[str, Any]:
    """Everything the child needs to build Megatron-Bridge's ConfigContainer; inputs checked first."""
    spec: dict[str, Any] = {
        "mode": mode,
        "hf_model_path": as_path(run.p.hf_model_path),
        "load_hf_weights": mode == "sft" or run.p.load_hf_weights,
        "seq_length": run.p.seq_length,
        "train": run.p.train.model_dump(),
        "parallel": {"expert_model_parallel_size": 1}  # where the step sets none
        | run.p.model.model_dump(exclude={"recompute_granularity"}),
        "recompute_granularity": run.p.model.recompute_granularity,
        "checkpoint": {
            "save": save_dir(run),
            "save_interval": run.p.checkpoint.save_interval,
            "pretrained_checkpoint": base_checkpoint(run, mode),
        },
        "lr": run.p.optimizer.lr if mode == "pretrain" else None,
        "peft": lora(run, mode),
        "tracking": run.tracking.bridge() if run.tracking else {},
    }
    spec["dataset"] = pretrain_dataset(run) if mode == "pretrain" else packed_dataset(run, spec["seq_length"])
    return spec


def save_dir(run: StepRun) -> Path:
    """Where Megatron-Bridge saves: the work directory, so a retried run resumes (the store publishes it)."""
    return run.work_dir / "checkpoints"


def lora(run: StepRun, mode: str) -> dict[str, Any] | None:
    """The adapter: peft's peft.* parameters; sft's `peft: lora` the fixed default adapter."""
    if mode == "peft":
        return run.p.peft.model_dump()
    if mode == "sft" and run.p.peft == "lora":
        return {"type": "lora", "dim": 32, "alpha": 32, "dropout": 0.0, "target_modules": ["linear_qkv", "linear_proj"]}
    return None


def base_checkpoint(run: StepRun, mode: str) -> Path | None:
    """The Megatron checkpoint training starts from (validated); peft requires one, kept apart from its output."""
    given = None if mode == "pretrain" else run.p.checkpoint.pretrained_checkpoint
    path = (
        Path(given)
        if given
        else run.inputs["checkpoint_megatron"].path
        if "checkpoint_megatron" in run.inputs
        else None
    )
    if path is None:
        if mode == "peft":
            raise run.error("missing_base_checkpoint", "no checkpoint.pretrained_checkpoint and no Megatron input")
        return None
    try:
        iteration = megatron_iteration_dir(path)
        validate(path, "checkpoint_megatron")
    except NamedError as e:
        name = "missing_base_checkpoint" if has_error(run, "missing_base_checkpoint") else e.name
        raise run.error(name, e.detail) if name != e.name else e from None
    if mode == "peft" and overlaps(save_dir(run), path):
        raise run.error("base_and_adapter_paths_mixed", f"the adapter's save directory {save_dir(run)} overlaps {path}")
    check_sequence_length(run, iteration)
    return pinned(run, iteration)


def pinned(run: StepRun, iteration: Path) -> Path:
    """A run directory holding only `iteration` (linked) and a tracker naming it: Megatron-Bridge loads a
    pretrained checkpoint through its directory's tracker, which may name a later iteration than the one chosen."""
    base = run.work_dir / "base"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    (base / iteration.name).symlink_to(relative(iteration, base), target_is_directory=True)
    (base / MEGATRON_TRACKER).write_text(str(int(iteration.name[5:])))
    if (iteration / "train_state.pt").exists():  # Megatron-Bridge reads this tracker first (the legacy one refuses 0)
        (base / "latest_train_state.pt").symlink_to(relative(iteration / "train_state.pt", base))
    return base


def relative(target: Path, directory: Path) -> str:
    """A link target that resolves the same on the host and in a job, wherever the job mounts the storage."""
    return os.path.relpath(target.resolve(), directory.resolve())


def check_sequence_length(run: StepRun, iteration: Path) -> None:
    """CPT keeps the sequence length of the checkpoint it continues (pretrain's sequence_length_mismatch)."""
    config = iteration / "run_config.yaml"
    if not has_error(run, "sequence_length_mismatch") or not config.exists():
        return
    trained = (yaml.safe_load(config.read_text()).get("model") or {}).get("seq_length")
    if trained and trained != run.p.seq_length:
        raise run.error("sequence_length_mismatch", f"checkpoint trained at {trained}, seq_length {run.p.seq_length}")


def packed_shards(run: StepRun) -> list[Path]:
    """The packed training shards: the parameter's glob, else the packed_parquet input's splits/train."""
    pattern = run.p.dataset.packed_sequence_specs.packed_train_data_path
    if not pattern and "packed_parquet" in run.inputs:
        pattern = str(run.input("packed_parquet").path / "splits" / "train" / "*.parquet")
    shards = sorted(Path(p) for p in glob.glob(pattern or "", recursive=True))
    if not shards:
        raise run.error("missing_packed_data", f"{pattern!r} matched no Parquet shard")
    return shards


def packed_dataset(run: StepRun, seq_length: int) -> dict[str, Any]:
    """Check the bins against the model (sizes, tokenizer, template) and write them in Megatron-Bridge's format."""
    shards = packed_shards(run)
    packed_size = getattr(run.p.dataset.packed_sequence_specs, "packed_sequence_size", seq_length)  # sft only
    recorded = read_provenance(run.input("packed_parquet").path) if "packed_parquet" in run.inputs else None
    pack_size = (recorded or {}).get("params", {}).get("pack_size")
    if len({seq_length, packed_size, pack_size or seq_length}) != 1:
        raise run.error(
            "pack_size_mismatch",
            f"seq_length {seq_length}, packed_sequence_size {packed_size}, pack_size of the bins {pack_size}",
        )
    check_tokenizer(run, (recorded or {}).get("tokenizer"))
    import pyarrow.parquet as pq

    bins = []
    for shard in shards:
        bins += pq.read_table(shard, columns=["input_ids", "loss_mask", "seq_start_id"]).to_pylist()
    batch = run.p.train.global_batch_size
    if len(bins) < batch:  # Megatron-Bridge's batch sampler drops the incomplete batch and would cycle forever
        raise run.error("too_few_packed_bins", f"{len(bins)} bins, fewer than train.global_batch_size {batch}")
    if not any(1 in b["loss_mask"] for b in bins):
        raise run.error("bad_loss_masks_or_template", f"no trainable token in {len(shards)} shard(s)")
    path = run.work_dir / f"training_{seq_length}.npy"
    np.save(path, np.array(bins, dtype=object), allow_pickle=True)
    metadata = run.work_dir / f"{seq_length}_metadata.jsonl"
    metadata.write_text(json.dumps([pack_metadata(bins)]))
    tokens = sum(len(b["input_ids"]) for b in bins)
    return {
        "kind": "packed",
        "path": path,
        "metadata": metadata,
        "packed_sequence_size": packed_size,
        "bins": len(bins),
        "tokens": tokens,
    }


def pack_metadata(bins: list[dict[str, list[int]]]) -> dict[str, int]:
    """What Megatron-Bridge's packed loader reads beside the bins: most sequences in a bin, longest sequence."""
    longest = max(int(np.diff([*b["seq_start_id"], len(b["input_ids"])]).max()) for b in bins)
    return {"max_samples_per_bin": max(len(b["seq_start_id"]) for b in bins), "dataset_max_seqlen": longest}


def check_tokenizer(run: StepRun, recorded: dict[str, Any] | None) -> None:
    """tokenizer_mismatch unless the bins were made with the model's tokenizer and chat template."""
    if not recorded:
        return
    model = run.p.hf_model_path
    try:
        tokenizer = load_tokenizer(model)
    except TokenizerUnavailable:  # a hub model not present here: the packing must name the same model
        if recorded.get("name_or_path") != model:
            raise run.error(
                "tokenizer_mismatch", f"bins made with {recorded.get('name_or_path')}, model {model}"
            ) from None
        return
    template = ChatTemplate(tokenizer.chat_template).fingerprint if tokenizer.chat_template else None
    for what, mine, theirs in (
        ("tokenizer", tokenizer.fingerprint, recorded.get("fingerprint")),
        ("chat template", template, recorded.get("chat_template_fingerprint")),
    ):
        if theirs and mine != theirs:
            raise run.error(
                "tokenizer_mismatch", f"bins made with {what} {theirs[:12]}, {model} has {(mine or 'none')[:12]}"
            )


def pretrain_dataset(run: StepRun) -> dict[str, Any]:
    """blend.json of pretrain_prep, every prefix present (missing_blend_json otherwise)."""
    given = run.p.dataset.data_paths
    path = Path(given) if given else run.input("binidx").path / BLEND_FILE if "binidx" in run.inputs else None
    if path is None or not path.is_file():
        raise run.error("missing_blend_json", f"{path}: no blend.json")
    try:
        validate(path.parent, "binidx")
    except NamedError as e:
        raise run.error("missing_blend_json", e.detail) from None
    blend = read_blend(path)
    return {"kind": "blend", "splits": {split: [[w, p] for w, p in pairs] for split, pairs in blend.items()}}


def publish(run: StepRun, save: Path, spec: dict[str, Any]) -> StepResult:
    """The run directory (tracker + the last iter_*) hard-linked into the artifact; training stats."""
    latest = megatron_iteration_dir(save)
    (run.output_dir / latest.name).mkdir()
    for item in latest.rglob("*"):
        target = run.output_dir / latest.name / item.relative_to(latest)
        if item.is_dir():
            target.mkdir(exist_ok=True)
        else:
            link_or_copy(item, target)
    link_or_copy(save / MEGATRON_TRACKER, run.output_dir / MEGATRON_TRACKER)
    log = run.work_dir / "training_log.json"
    stats = json.loads(log.read_text()) if log.exists() else {}
    stats |= {"iteration": int(latest.name[5:]), "world_size": spec.get("world_size")}
    provenance: dict[str, Any] = {
        "training": {"mode": spec["mode"], "hf_model_path": str(spec["hf_model_path"])}
    } | run.tracking_provenance()
    if spec["checkpoint"]["pretrained_checkpoint"]:
        provenance["base_model"] = base_record(run, spec["checkpoint"]["pretrained_checkpoint"])
    if spec["peft"]:
        provenance["lora"] = spec["peft"]
    return StepResult(stats, provenance)


def base_record(run: StepRun, pinned_base: Path) -> dict[str, str]:
    """The exact Megatron base: its iter_* directory, fingerprinted by its artifact version or its content."""
    iteration = megatron_iteration_dir(pinned_base).resolve()
    given = run.inputs.get("checkpoint_megatron")
    fingerprint = f"artifact:{given.version}" if given else content_digest(iteration)
    return {"name_or_path": str(iteration), "fingerprint": fingerprint}
