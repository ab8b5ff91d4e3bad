"""sft/automodel, peft/automodel and pretrain/automodel: NeMo AutoModel's fine-tune recipe, configured from the
step's parameters, over chat JSONL (SFT, LoRA) or the bin/idx shards of pretrain_prep (pretraining, CPT).

The recipe runs in a child process (automodel.job): one process on CPU, torchrun on GPUs. Checkpoints go to
the stage's work directory, so a retried run resumes from the last one (the recipe restores it by itself).
The last checkpoint becomes the artifact: a consolidated HF directory (full SFT) or an HF-PEFT adapter whose
provenance records the exact base, tokenizer, rank, alpha, target modules and data version.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nemotron_assets.artifacts.binidx import BLEND_FILE, read_blend
from nemotron_assets.artifacts.files import TRAIN, data_files, link_or_copy, tokenizer_fingerprint
from nemotron_assets.artifacts.jsonl import require_assistant_turns
from nemotron_assets.digests import content_digest
from nemotron_assets.steps import InputArtifact, StepResult, StepRun
from nemotron_assets.steps.data_prep.tokenizer import Tokenizer, TokenizerUnavailable, load_tokenizer
from nemotron_assets.steps.launch import as_path
from nemotron_assets.steps.training_log import training_stats

RECIPE_TARGETS = {
    "model": "nemo_automodel.NeMoAutoModelForCausalLM.from_pretrained",
    "rng": "nemo_automodel.components.training.rng.StatefulRNG",
    "peft": "nemo_automodel.components._peft.lora.PeftConfig",
    "loss_fn": "nemo_automodel.components.loss.masked_ce.MaskedCrossEntropy",
    "dataset": "nemo_automodel.components.datasets.llm.chat_dataset.ChatDataset",
    "pretraining": "nemo_automodel.components.datasets.llm.megatron_dataset.MegatronPretraining",
    "model_from_config": "nemo_automodel.NeMoAutoModelForCausalLM.from_config",
    "dataloader": "torchdata.stateful_dataloader.StatefulDataLoader",
    "optimizer": "torch.optim.AdamW",
    "mp_policy": "torch.distributed.fsdp.MixedPrecisionPolicy",
}
# Adapting lm_head breaks merging into models that tie it to the input embeddings, and downstream tools.
OUTPUT_HEAD = ["lm_head", "*.lm_head"]


def lora_requested(run: StepRun) -> bool:
    return run.step.id == "peft/automodel" or (run.step.id == "sft/automodel" and run.p.peft.type == "lora")


def recipe_config(run: StepRun, gpus: int) -> dict[str, Any]:
    """The recipe's YAML config from the step's parameters and its training_jsonl input."""
    precision = {"bf16": "bfloat16", "fp32": "float32"}[run.p.precision]
    config: dict[str, Any] = {
        "step_scheduler": run.p.step_scheduler.model_dump(),
        "dist_env": {"backend": "nccl" if gpus else "gloo", "timeout_minutes": 30},
        "rng": {"_target_": RECIPE_TARGETS["rng"], "seed": run.p.seed, "ranked": True},
        "model": model_config(run, gpus),
        "checkpoint": {
            "enabled": True,
            "checkpoint_dir": run.work_dir / "checkpoints",
            "model_save_format": "safetensors",
            "save_consolidated": True,
        },
        "distributed": {
            "strategy": "fsdp2",
            "enable_compile": run.p.compile,  # per decoder layer; AutoModel ignores a top-level `compile:` under FSDP2
            "tp_size": 1,
            "cp_size": 1,
            "pp_size": 1,
            "mp_policy": {
                "_target_": RECIPE_TARGETS["mp_policy"],
                "param_dtype": precision,
                "reduce_dtype": "float32",
                "output_dtype": None,
                "cast_forward_inputs": False,
            },
        },
        "loss_fn": {"_target_": RECIPE_TARGETS["loss_fn"]},
        "dataset": dataset_config(run),
        "dataloader": {
            "_target_": RECIPE_TARGETS["dataloader"],
            "collate_fn": run.p.dataloader.collate_fn,
            "shuffle": True,
        },
        "optimizer": {"_target_": RECIPE_TARGETS["optimizer"], "lr": run.p.optimizer.lr}
        | ({"fused": True} if gpus else {}),
    }
    if run.tracking:
        config |= run.tracking.automodel()
    if lora_requested(run):
        config["peft"] = {
            "_target_": RECIPE_TARGETS["peft"],
            **run.p.peft.model_dump(include={"dim", "alpha", "dropout"}),
            "use_triton": gpus > 0,
        } | (
            {"target_modules": run.p.peft.target_modules}
            if run.p.peft.target_modules
            else {"exclude_modules": OUTPUT_HEAD}  # every linear layer but the (possibly tied) output head
        )
    return config


def training_data(run: StepRun) -> InputArtifact:
    """The data the model trains on: pretraining bins, or chat records."""
    return run.input("binidx" if "binidx" in run.inputs else "training_jsonl")


def model_config(run: StepRun, gpus: int) -> dict[str, Any]:
    """Load the model's weights, or (pretraining with load_weights false) only its architecture. Weights are fp32
    masters whose compute precision FSDP2's policy sets; on one GPU AutoModel does not shard, so bf16 compute
    needs bf16 weights."""
    model = as_path(run.p.model.pretrained_model_name_or_path)
    dtype = "bfloat16" if gpus == 1 and run.p.precision == "bf16" else "float32"
    config = {"torch_dtype": dtype, "attn_implementation": "sdpa"}
    if run.step.id != "pretrain/automodel" or run.p.load_weights:
        return {"_target_": RECIPE_TARGETS["model"], "pretrained_model_name_or_path": model} | config
    return {"_target_": RECIPE_TARGETS["model_from_config"], "config": model} | config


def dataset_config(run: StepRun) -> dict[str, Any]:
    """Chat records for SFT/LoRA; for pretraining, the bins by split with absolute prefixes (validation unweighted)."""
    if "binidx" not in run.inputs:
        files = data_files(run.input("training_jsonl").path, (".jsonl",), TRAIN)
        require_assistant_turns(files)
        return {
            "_target_": RECIPE_TARGETS["dataset"],
            "path_or_dataset_id": files,
            "seq_length": run.p.seq_length,
        }
    blend = read_blend(run.input("binidx").path / BLEND_FILE)
    paths = {"train": [x for weight, prefix in blend["train"] for x in (str(weight), prefix)]}
    if "valid" in blend:
        paths["validation"] = [prefix for _, prefix in blend["valid"]]
    return {
        "_target_": RECIPE_TARGETS["pretraining"],
        "paths": paths,
        "seq_length": run.p.seq_length,
        "splits_to_build": "train",
        "index_mapping_dir": run.work_dir / "index_mapping",
    }


def check_tokenizer(run: StepRun, tokenizer: Tokenizer) -> None:
    """Pretraining bins are only valid for the tokenizer that made them."""
    if "binidx" not in run.inputs:
        return
    made_with = tokenizer_fingerprint(run.input("binidx").path)
    if made_with and made_with != tokenizer.fingerprint:
        raise run.error(
            "tokenizer_or_sequence_mismatch",
            f"{run.input('binidx').name} was tokenized with {made_with[:12]}, the model's tokenizer is "
            f"{tokenizer.fingerprint[:12]}",
        )


def latest_checkpoint(checkpoint_dir: Path) -> Path:
    """The last checkpoint the recipe committed (its LATEST pointer; a half-written save never is)."""
    return (checkpoint_dir / "LATEST").resolve(strict=True)


def base_model_record(name_or_path: str) -> dict[str, str]:
    """The exact base an adapter belongs to: a local checkpoint by content, a hub id by its name."""
    path = Path(name_or_path)
    fingerprint = content_digest(path) if path.is_dir() else f"hub:{name_or_path}"
    return {"name_or_path": name_or_path, "fingerprint": fingerprint}


def run(run: StepRun) -> StepResult:
    model = run.p.model.pretrained_model_name_or_path
    try:
        tokenizer = load_tokenizer(model)
    except TokenizerUnavailable as e:
        raise run.error("model_unavailable", str(e)) from None
    if "training_jsonl" in run.inputs and not tokenizer.chat_template:
        raise run.error("chat_template_missing", f"{model} has no chat template")
    check_tokenizer(run, tokenizer)
    gpus = run.gpus
    run.work_dir.mkdir(parents=True, exist_ok=True)
    recipe = recipe_config(run, gpus)
    run.launch_job("automodel", {"recipe": recipe}, max(gpus, 1), torchrun=gpus > 0, env=run.tracking_env())

    checkpoints = run.work_dir / "checkpoints"
    model_dir = latest_checkpoint(checkpoints) / "model"
    lora = lora_requested(run)
    source = model_dir if lora else model_dir / "consolidated"
    for item in source.iterdir():
        if item.is_file():
            link_or_copy(item, run.output_dir / item.name)
    stats, plots = training_stats(checkpoints / "training.jsonl", run.output_dir)
    provenance: dict[str, Any] = {
        "tokenizer": {"name_or_path": model, "fingerprint": tokenizer.fingerprint, "vocab_size": tokenizer.vocab_size},
        "data_version": training_data(run).version,
    } | run.tracking_provenance()
    if lora:
        adapter = json.loads((run.output_dir / "adapter_config.json").read_text())
        provenance["base_model"] = base_model_record(model)
        provenance["lora"] = {
            "rank": adapter.get("r"),
            "alpha": adapter.get("lora_alpha"),
            "target_modules": adapter.get("target_modules"),
            "data_version": training_data(run).version,
        }
    return StepResult(stats, provenance, plots)
