"""Job backend of the ModelOpt steps: the torch work, launched through the profile's executor.

Quantize and distill import HF models as Megatron-Core models through Megatron-Bridge's AutoBridge, save a Megatron
checkpoint (`bridge.save_megatron_model`), load it back and measure it again, and write an optional HF export.
`quantize`: measure the model's mean token NLL on held-out texts, calibrate ModelOpt's quantizers on the calibration
texts (`mtq.quantize` with the recipe's config: fake-quant on CPU, real kernels on GPU), measure the quantized model
on the same texts; the HF export is ModelOpt's unified (deployable) one.
`distill`: train the student on the teacher's logits with ModelOpt's Megatron distillation plugin (logits KL
between the two output layers), measuring the student before and after; the HF export is the bridge's own.
`prune`: Minitron structured pruning of the HF model as Megatron-Core models (ModelOpt's `mcore_minitron` mode, our
own job on Megatron-Bridge; needs Megatron-Core >= 0.17), exported to HF through the bridge.
Each writes result.json into the work directory.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from nemotron_assets.job import JobSpec

RECIPES = {  # args.export_quant_cfg -> ModelOpt config name
    "fp8": "FP8_DEFAULT_CFG",
    "fp8_blockwise": "FP8_2D_BLOCKWISE_WEIGHT_ONLY_CFG",
    "int8_sq": "INT8_SMOOTHQUANT_CFG",
    "int4_awq": "INT4_AWQ_CFG",
    "w4a8_awq": "W4A8_AWQ_BETA_CFG",
    "nvfp4": "NVFP4_DEFAULT_CFG",
}


def quant_config(recipe: str) -> dict[str, Any]:
    import modelopt.torch.quantization as mtq

    return getattr(mtq, RECIPES[recipe])


def enabled_quantizers(recipe: str) -> list[Any]:
    """The recipe's enabled quantizer settings, validated by ModelOpt's own schema."""
    from modelopt.torch.quantization.config import QuantizeConfig

    config = QuantizeConfig.model_validate(quant_config(recipe))
    enabled = [entry.cfg for entry in config.quant_cfg if entry.enable is not False and entry.cfg is not None]
    return [one for cfg in enabled for one in (cfg if isinstance(cfg, list) else [cfg])]


def block_size(recipe: str) -> int:
    """The recipe's block along a weight's input dimension (1: not block-quantized), from ModelOpt's config."""
    blocks = [(cfg.block_sizes or {}).get(-1) for cfg in enabled_quantizers(recipe) if hasattr(cfg, "block_sizes")]
    return max((b for b in blocks if b), default=1)


def quantize(job: dict[str, Any]) -> dict[str, Any]:
    """Quantize the HF model as Megatron-Core models (Megatron-Bridge's AutoBridge) and save them as a Megatron
    checkpoint with their ModelOpt state; the saved checkpoint is loaded back and must give the quantized model's
    held-out NLL. With `hf_export`, ModelOpt's unified HF export of the quantized model goes there too."""
    import modelopt.torch.quantization as mtq
    import torch
    from transformers import AutoTokenizer

    from nemotron_assets.artifacts.checkpoints import megatron_iteration_dir
    from nemotron_assets.steps.megatron_bridge import convert_job, no_te

    cpu = not torch.cuda.is_available()
    dtype = torch.float32 if cpu else torch.bfloat16
    bridge = convert_job.hf_bridge(job["model"], dtype, tp=job["tp"])
    models = convert_job.megatron_models(bridge, SimpleNamespace(tp=job["tp"], pp=1, ep=1, etp=1), cpu)
    tokenizer = AutoTokenizer.from_pretrained(job["model"])
    model = models[0].eval()
    holdout = [ids for ids in token_ids(tokenizer, job["holdout"], job["max_tokens"]) if ids.shape[1] > 1]
    before = megatron_nll(model, holdout)

    def forward_loop(m) -> None:
        for ids in token_ids(tokenizer, job["calibration"], job["max_tokens"]):
            convert_job.megatron_forward(m, ids)

    mtq.quantize(model, quant_config(job["recipe"]), forward_loop=forward_loop)
    after = megatron_nll(model, holdout)
    quantizers = [m for name, m in model.named_modules() if name.endswith("_quantizer") and m.is_enabled]
    bridge.save_megatron_model(models, job["output"], hf_tokenizer_path=job["model"])
    if job["hf_export"]:
        from megatron.core.utils import unwrap_model  # after hf_bridge: Megatron-Bridge's stand-ins come first

        export = no_te.modelopt_megatron_export()  # the GPT model itself, not its bf16 Float16Module wrapper
        export(unwrap_model(model), job["model"], dtype=dtype, export_dir=str(Path(job["hf_export"])))
    del models, model
    restored = convert_job.load_checkpoint(megatron_iteration_dir(Path(job["output"])), cpu)[0].eval()
    return {
        "device": "cpu" if cpu else "cuda",
        "enabled_quantizers": len(quantizers),
        "restored_quantizers": sum(m.is_enabled for n, m in restored.named_modules() if n.endswith("_quantizer")),
        "nll_before": before,
        "nll_after": after,
        "nll_restored": megatron_nll(restored, holdout),
    }


def token_ids(tokenizer, texts: list[str], max_tokens: int):
    """Each text's token ids as a [1, tokens] tensor, truncated to `max_tokens`."""
    for text in texts:
        yield tokenizer(text, return_tensors="pt", truncation=True, max_length=max_tokens)["input_ids"]


def megatron_nll(model, samples) -> float | None:
    """A Megatron GPT model's mean next-token negative log-likelihood over [1, tokens] samples (token-weighted,
    through its own loss, tensor-parallel safe); None without samples."""
    from nemotron_assets.steps.megatron_bridge.convert_job import megatron_forward

    total, tokens = 0.0, 0
    for ids in samples:
        loss = megatron_forward(model, ids[:, :-1], ids[:, 1:])
        total += loss.float().sum().item()
        tokens += loss.numel()
    return total / tokens if tokens else None


def distill(job: dict[str, Any]) -> dict[str, Any]:
    """Distil the student on the teacher's logits, both imported as Megatron-Core models (Megatron-Bridge's
    AutoBridge), through ModelOpt's Megatron distillation plugin (logits KL, the student's own LM loss skipped) and
    Megatron-Bridge's KD loss function; save the student as a Megatron checkpoint, load it back and measure it again,
    and with `hf_export` write its HF export (the bridge's Megatron -> HF) there."""
    import modelopt.torch.distill as mtd
    import torch
    from transformers import AutoTokenizer

    from nemotron_assets.artifacts.checkpoints import megatron_iteration_dir
    from nemotron_assets.steps.megatron_bridge import convert_job

    cpu = not torch.cuda.is_available()
    parallel = SimpleNamespace(tp=1, pp=1, ep=1, etp=1)
    bridge = convert_job.hf_bridge(job["student"], torch.float32)  # the trained weights are AdamW's master copy
    student = convert_job.megatron_models(bridge, parallel, cpu)[0]
    teacher_bridge = convert_job.hf_bridge(job["teacher"], torch.float32 if cpu else torch.bfloat16)
    from megatron.core.utils import unwrap_model  # after hf_bridge: Megatron-Bridge's stand-ins come first

    # ModelOpt looks the teacher's layers up by name: without the Float16Module a bf16 model is wrapped in
    teacher = unwrap_model(convert_job.megatron_models(teacher_bridge, parallel, cpu)[0]).eval()
    tokenizer = AutoTokenizer.from_pretrained(job["student"])
    holdout = list(itertools.islice(training_samples(job["data"], tokenizer, job["max_tokens"]), job["holdout"]))
    train = training_stream(job["data"], tokenizer, job["max_tokens"], job["holdout"])
    before, teacher_nll = megatron_nll(student.eval(), holdout), megatron_nll(teacher, holdout)
    # imported once hf_bridge has imported Megatron-Bridge (with its stand-ins where Transformer Engine is absent)
    import modelopt.torch.distill.plugins.megatron as mtd_mcore
    from megatron.bridge.training.post_training.distillation import ModelOptDistillConfig

    config = mtd_mcore.setup_distillation_config(ModelOptDistillConfig(), student.config, teacher.config)
    kd = {"teacher_model": teacher, "criterion": config.criterion, "loss_balancer": config.loss_balancer}
    model = mtd.convert(student, mode=[("kd_loss", kd)])
    mtd_mcore.adjust_distillation_model_for_mcore(model, config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=job["lr"])
    size, losses = job["batch_size"], []
    model.train()
    for _ in range(job["steps"]):
        tokens, labels, mask = padded([next(train) for _ in range(size)])
        output = convert_job.megatron_forward(model, tokens, labels, grad=True)  # the teacher's forward inside
        loss = kd_loss(model, output, mask.to(output.device))
        loss.backward()
        losses.append(loss.item())
        optimizer.step()
        optimizer.zero_grad()
    student = plain_student(mtd.export(model)).eval()
    after = megatron_nll(student, holdout)
    bridge.save_megatron_model([student], job["output"], hf_tokenizer_path=job["student"])
    result = {"device": "cpu" if cpu else "cuda", "kd_loss": losses, "teacher_nll": teacher_nll}
    if job["hf_export"]:
        bridge.save_hf_pretrained([student], job["hf_export"], show_progress=False)
        result |= convert_job.export_difference(bridge, [student], job["hf_export"])
    del student, model, teacher
    restored = convert_job.load_checkpoint(megatron_iteration_dir(Path(job["output"])), cpu)[0].eval()
    restored_nll = megatron_nll(restored, holdout)
    return result | {"student_nll_before": before, "student_nll_after": after, "student_nll_restored": restored_nll}


def training_samples(data: dict[str, Any], tokenizer, max_tokens: int):
    """[1, tokens] samples of two tokens or more: the texts tokenized, or the binidx shards' token windows."""
    import torch

    from nemotron_assets.artifacts.binidx import windows

    if "binidx" in data:
        samples = (torch.from_numpy(w)[None] for w in windows([Path(p) for p in data["binidx"]], max_tokens))
    else:
        samples = token_ids(tokenizer, data["texts"], max_tokens)
    return (ids for ids in samples if ids.shape[1] > 1)


def training_stream(data: dict[str, Any], tokenizer, max_tokens: int, holdout: int):
    """The samples after the held-out ones, from the first again when they run out (the step checked there are
    some), one at a time: a batch in memory, not the corpus."""
    while True:
        yield from itertools.islice(training_samples(data, tokenizer, max_tokens), holdout, None)


def padded(samples):
    """[1, n] samples as one right-padded batch: inputs and labels [batch, longest - 1] and the labels' mask (under
    the causal mask no real position sees the padding)."""
    import torch

    width = max(ids.shape[1] for ids in samples)
    tokens, mask = torch.zeros(len(samples), width, dtype=torch.long), torch.zeros(len(samples), width - 1)
    for row, ids in enumerate(samples):
        tokens[row, : ids.shape[1]] = ids[0]
        mask[row, : ids.shape[1] - 1] = 1
    return tokens[:, :-1], tokens[:, 1:], mask


def kd_loss(model, output, mask):
    """The mean KD loss over the batch's real tokens, through Megatron-Bridge's distillation loss function (the
    loss its training step uses: the ModelOpt criterion's per-token losses, masked and tensor-parallel reduced)."""
    from megatron.bridge.training.post_training.distillation import loss_func_kd

    def lm_loss(per_token):
        return (per_token.float() * mask).sum(), mask.sum(), {}

    loss, tokens, _ = loss_func_kd(output, mask, lm_loss, model)
    return loss / tokens


# what ModelOpt's adjust_distillation_model_for_mcore sets on the student instance
MCORE_DISTILL_OVERRIDES = (
    "forward",
    "compute_language_model_loss",
    "sharded_state_dict",
    "set_input_tensor",
    "set_student_input_tensor_shape",
)


def plain_student(student):
    """The student `mtd.export` returns, without the per-instance methods the Megatron plugin set on it (the
    teacher forward, the skipped LM loss, the teacher-hiding state dict) and without the ModelOpt state the
    distillation modes left (the student came from HF without any): a plain GPT model, saved without modelopt_state."""
    import modelopt.torch.opt as mto

    for name in MCORE_DISTILL_OVERRIDES:
        vars(student).pop(name, None)
    if mto.ModeloptStateManager.is_converted(student):
        mto.ModeloptStateManager.remove_state(student)
    return student


STAGE_LAYERS = ("num_layers_in_first_pipeline_stage", "num_layers_in_last_pipeline_stage")
MINITRON_DIVISORS = {  # ModelOpt's defaults for the NAS search space (GPT models)
    "hidden_size_divisor": 256,
    "ffn_hidden_size_divisor": 512,
    "num_layers_divisor": 2,
}
HF_SHAPE = {  # the pruned Megatron config -> the HF config (Llama-style names)
    "hidden_size": "hidden_size",
    "ffn_hidden_size": "intermediate_size",
    "num_attention_heads": "num_attention_heads",
    "num_query_groups": "num_key_value_heads",
    "kv_channels": "head_dim",
    "num_layers": "num_hidden_layers",
}


def prune(job: dict[str, Any]) -> dict[str, Any]:
    """Minitron structured pruning, one rank of a torchrun over the pipeline stages: the HF model as Megatron-Core
    models (Megatron-Bridge's AutoBridge), ModelOpt's `mcore_minitron` mode calibrated on the calibration texts
    (activation-based importance of heads, neurons, hidden channels and layers), pruned to the exact
    `export_config` or, by its NAS search, to at most `target_params` parameters (the candidates scored by held-out
    NLL), then exported to HF through a bridge over the pruned shape, the tokenizer beside it. Held-out NLL and
    parameters are measured before and after."""
    import torch
    from transformers import AutoTokenizer

    from nemotron_assets.steps.megatron_bridge import convert_job, no_te

    minitron = no_te.import_minitron()
    import modelopt.torch.opt as mto
    import modelopt.torch.prune as mtp

    from nemotron_assets.job import JobError
    from nemotron_assets.steps.modelopt import local_layers

    local_layers.support_local_layers(minitron)

    cpu = not torch.cuda.is_available()
    dtype = torch.float32 if cpu else torch.bfloat16
    bridge = convert_job.hf_bridge(job["model"], dtype, pp=job["pp"])
    stages = {name: job[name] for name in STAGE_LAYERS if job.get(name) is not None}
    parallel = SimpleNamespace(tp=1, pp=job["pp"], ep=1, etp=1)
    models = convert_job.megatron_models(bridge, parallel, cpu, stages | {"pipeline_dtype": dtype})
    model = models[0].eval()
    fixed = local_layers.LOCAL_FIXED if local_layers.uses_local_layers(model) else ()
    local_layers.prepare(model)
    if fixed and set(fixed) & set(job["export_config"] or {}):
        detail = f"{list(fixed)} cannot be pruned on Megatron-Core's local layers (no Transformer Engine here)"
        raise JobError("invalid_prune_config", detail)
    tokenizer = AutoTokenizer.from_pretrained(job["model"])
    calibration = list(token_ids(tokenizer, job["calibration"], job["max_tokens"]))
    holdout = [ids for ids in token_ids(tokenizer, job["holdout"], job["max_tokens"]) if ids.shape[1] > 1]

    def forward_loop(m) -> None:
        for ids in calibration:
            stage_forward(m, ids)

    before = {"parameters": model_parameters(model), "nll": pipeline_nll(model, holdout)}
    if job["export_config"]:
        # an exact shape: any width is a choice (ModelOpt's search-space divisors only restrict the search)
        space = minitron.get_mcore_minitron_config(
            hidden_size_divisor=1, ffn_hidden_size_divisor=1, num_layers_divisor=1
        )
        constraints: dict[str, Any] = {"export_config": dict(job["export_config"])}
        config: dict[str, Any] = {"forward_loop": forward_loop}
    else:
        space = minitron.get_mcore_minitron_config(**search_divisors(model.config))
        constraints = {"params": job["target_params"]}
        config = {
            "forward_loop": forward_loop,
            "score_func": lambda m: -pipeline_nll(m, holdout),
            "hparams_to_skip": sorted({*job["hparams_to_skip"], *fixed}) or None,
            "top_k": job["top_k"],
        }
    model, search = mtp.prune(model, mode=[("mcore_minitron", space)], constraints=constraints, dummy_input=None,
                              config=config)  # fmt: skip
    if mto.ModeloptStateManager.has_state_for_mode_type("prune", model=model):
        mto.ModeloptStateManager.remove_state(model)  # the pruned model is a plain (homogeneous) one now
    models[0] = model
    after = {"parameters": model_parameters(model), "nll": pipeline_nll(model, holdout)}
    shape = {name: getattr(model.config, name) for name in HF_SHAPE}
    export_hf(models, job["model"], job["output"], shape, search.get("sorted_layers"))
    if torch_rank() == 0:
        tokenizer.save_pretrained(job["output"])
    torch.distributed.barrier()
    return {
        "device": "cpu" if cpu else "cuda",
        "parameters_before": before["parameters"],
        "parameters_after": after["parameters"],
        "nll_before": before["nll"],
        "nll_after": after["nll"],
        "pruned_shape": shape,
        "divisors": next(iter(space.model_dump().values()), {}),  # the search space's granularity
        "calibration_samples": len(calibration),
        "holdout_samples": len(holdout),
    }


def search_divisors(config) -> dict[str, int]:
    """The NAS search space's granularity: ModelOpt's defaults, finer for a model too small for them (at least
    16 steps over each width), so the search has candidates under the size limit."""

    def step(width: int, default: int) -> int:
        return max(1, min(default, 1 << max(0, (width // 16).bit_length() - 1)))

    return {
        "hidden_size_divisor": step(config.hidden_size, MINITRON_DIVISORS["hidden_size_divisor"]),
        "ffn_hidden_size_divisor": step(config.ffn_hidden_size, MINITRON_DIVISORS["ffn_hidden_size_divisor"]),
        "num_layers_divisor": 1 if config.num_layers < 8 else MINITRON_DIVISORS["num_layers_divisor"],
    }


def stage_forward(model, ids):
    """The logits of one [1, tokens] sample: the model's own forward on one pipeline stage, else through every
    rank's stage (activations passed between them; CUDA only) with the full logits on every rank."""
    from megatron.core import parallel_state

    from nemotron_assets.steps.megatron_bridge.convert_job import megatron_forward

    if parallel_state.get_pipeline_model_parallel_world_size() == 1:
        return megatron_forward(model, ids)
    from modelopt.torch.utils.plugins.megatron_generate import megatron_prefill

    return megatron_prefill(model, ids.to(next(model.parameters()).device))


def pipeline_nll(model, samples) -> float | None:
    """Mean next-token NLL over [1, tokens] samples (token-weighted): `megatron_nll` on one pipeline stage, else from
    the pipeline's logits; None without samples."""
    import torch
    from megatron.core import parallel_state

    if parallel_state.get_pipeline_model_parallel_world_size() == 1:
        return megatron_nll(model, samples)
    total, tokens = 0.0, 0
    for ids in samples:
        logits = stage_forward(model, ids)[0, :-1].float()
        labels = ids[0, 1:].to(logits.device)
        total += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        tokens += labels.numel()
    return total / tokens if tokens else None


def model_parameters(model) -> int:
    """The parameters of the whole model (every pipeline stage's, each counted once)."""
    import torch
    from megatron.core import parallel_state

    local = sum(p.numel() for p in model.parameters())
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        tied = getattr(model, "share_embeddings_and_output_weights", False)
        if tied and model.post_process and not model.pre_process:
            local -= model.output_layer.weight.numel()  # the last stage's copy of the tied embedding
        count = torch.tensor([local], device=next(model.parameters()).device)
        torch.distributed.all_reduce(count, group=parallel_state.get_pipeline_model_parallel_group())
        local = int(count.item())
    return local


def export_hf(models, source: str, output: str, shape: dict[str, int], sorted_layers: list[int] | None) -> None:
    """The pruned Megatron models as an HF checkpoint: the source's HF config with the pruned shape, and a bridge
    over that config (Megatron-Bridge's Megatron -> HF export, as convert/megatron_to_hf) writing the weights."""
    from megatron.bridge import AutoBridge
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source)
    for megatron_name, hf_name in HF_SHAPE.items():
        if hasattr(config, hf_name) or hf_name != "head_dim":
            setattr(config, hf_name, shape[megatron_name])
    layer_types = getattr(config, "layer_types", None)
    if layer_types and sorted_layers and len(layer_types) != shape["num_layers"]:
        kept = set(sorted_layers[: shape["num_layers"]])  # 1-indexed, best first
        config.layer_types = [kind for i, kind in enumerate(layer_types) if i + 1 in kept]
    AutoBridge.from_hf_config(config).save_hf_pretrained(models, output, show_progress=False)
    if getattr(config, "tie_word_embeddings", False) and torch_rank() == 0:
        drop_tied_head(Path(output))


def torch_rank() -> int:
    import torch

    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def drop_tied_head(directory: Path, name: str = "lm_head.weight") -> None:
    """Remove the output layer a bridge built from a bare config writes beside tied embeddings (transformers ties
    it back on load), so the checkpoint holds each parameter once, like its source."""
    from safetensors.torch import load_file, save_file

    index = directory / "model.safetensors.index.json"
    mapping = json.loads(index.read_text())["weight_map"] if index.exists() else {name: "model.safetensors"}
    if name not in mapping or not (directory / mapping[name]).exists():
        return
    shard = directory / mapping[name]
    tensors = load_file(shard)
    if tensors.pop(name, None) is None:
        return
    save_file(tensors, shard, metadata={"format": "pt"})
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"].pop(name)
        index.write_text(json.dumps(data, indent=2))


def run(spec: JobSpec) -> None:
    """The spec's `task` (quantize, distill, prune) on its args; result.json in the work directory."""
    job = dict(spec.args)
    result = {"quantize": quantize, "distill": distill, "prune": prune}[job.pop("task")](job)
    if int(os.environ.get("RANK", "0")) == 0:
        (Path(spec.work_dir) / "result.json").write_text(json.dumps(result))
