"""Job backend of convert/hf_to_megatron and convert/megatron_to_hf: Megatron-Bridge's AutoBridge, then proof.

The spec's args: direction (import | export), hf, megatron (import: output run directory; export: iter_* directory),
out (export: HF output directory), dtype, trust (trust_remote_code), strict, progress, tp, pp, ep, etp.
import: HF -> Megatron dist checkpoint, then the saved checkpoint is loaded back and exported to HF in a scratch
directory; the report holds the largest logit difference between the source and that round-trip model (and the
Megatron model's own forward against the source). export: the iter_* checkpoint -> HF directory; the report holds
the largest difference between the Megatron model's logits and the exported model's. Logits are compared in
float32 on a fixed probe of token ids. The report is report.json in the work directory; an AutoBridge-unsupported
architecture is a named failure. The launching step applies the tolerance.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from nemotron_assets.job import JobError, JobSpec

PROBE_TOKENS = 24
DEFAULTS = {"out": None, "dtype": "bfloat16", "trust": False, "strict": False, "progress": False}


def run(spec: JobSpec) -> None:
    args = SimpleNamespace(**DEFAULTS | spec.args)
    import torch

    dtype = getattr(torch, args.dtype)
    bridge = hf_bridge(args.hf, dtype, args.tp, args.pp, args.trust)
    cpu = not torch.cuda.is_available()
    if args.direction == "import":
        report = import_checkpoint(bridge, args, dtype, cpu)
    else:
        report = export_checkpoint(bridge, args, cpu)
    if int(os.environ.get("RANK", "0")) == 0:
        (Path(spec.work_dir) / "report.json").write_text(json.dumps(report))


def hf_bridge(hf: str | Path, dtype, tp: int = 1, pp: int = 1, trust: bool = False):
    """Megatron-Bridge's AutoBridge over an HF model, in a process group of model parallel tp x pp; an
    architecture AutoBridge does not map is unsupported_or_custom_architecture."""
    from nemotron_assets.steps.megatron_bridge import no_te

    no_te.import_bridge()
    no_te.init_distributed(tp, pp)
    from megatron.bridge import AutoBridge
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(hf, trust_remote_code=trust)
    if not AutoBridge.supports(config):
        detail = f"architectures {getattr(config, 'architectures', None)} have no AutoBridge mapping"
        raise JobError("unsupported_or_custom_architecture", detail)
    return AutoBridge.from_hf_pretrained(hf, torch_dtype=dtype, trust_remote_code=trust)


def megatron_models(bridge, args: SimpleNamespace, cpu: bool, settings: dict[str, Any] | None = None) -> list:
    """The HF weights as Megatron-Core models (one per virtual pipeline stage), parallel as `args` says, with the
    provider's other `settings` (e.g. uneven pipeline stages)."""
    provider = bridge.to_megatron_provider(load_weights=True)
    _parallelism(provider, args)
    for name, value in (settings or {}).items():
        setattr(provider, name, value)
    provider.finalize()
    return provider.provide_distributed_model(wrap_with_ddp=False, use_cpu_initialization=cpu)


def import_checkpoint(bridge, args: SimpleNamespace, dtype, cpu: bool) -> dict[str, Any]:
    """HF -> Megatron, saved; then the saved checkpoint -> HF again, compared with the source."""
    from transformers import AutoModelForCausalLM

    from nemotron_assets.artifacts.checkpoints import megatron_iteration_dir

    models = megatron_models(bridge, args, cpu)
    bridge.save_megatron_model(models, args.megatron, hf_tokenizer_path=args.hf)
    probe = _probe(bridge.hf_pretrained.config.vocab_size)
    source = _hf_logits(AutoModelForCausalLM.from_pretrained(args.hf, dtype=dtype), probe)
    megatron = _megatron_logits(models, probe)
    del models
    reloaded = load_checkpoint(megatron_iteration_dir(Path(args.megatron)), cpu)
    with tempfile.TemporaryDirectory(prefix="round_trip_") as scratch:
        bridge.save_hf_pretrained(reloaded, scratch, show_progress=False)
        round_trip = _hf_logits(AutoModelForCausalLM.from_pretrained(scratch, dtype=dtype), probe)
    return {
        "largest_logit": source.abs().max().item(),
        "round_trip_logit_difference": (round_trip - source).abs().max().item(),
        "megatron_logit_difference": (megatron - source).abs().max().item(),
        "parameters": sum(p.numel() for p in reloaded[0].parameters()),
    }


def export_checkpoint(bridge, args: SimpleNamespace, cpu: bool) -> dict[str, Any]:
    """The iter_* checkpoint -> HF directory; its logits must be the Megatron model's."""
    models = load_checkpoint(Path(args.megatron), cpu)
    bridge.save_hf_pretrained(models, args.out, show_progress=args.progress, strict=args.strict)
    return export_difference(bridge, models, args.out) | {"parameters": sum(p.numel() for p in models[0].parameters())}


def export_difference(bridge, models, exported: str | Path) -> dict[str, float]:
    """The Megatron model's largest logit and the largest difference between its logits and those of its HF export
    (loaded with transformers), on the probe."""
    from transformers import AutoModelForCausalLM

    probe = _probe(bridge.hf_pretrained.config.vocab_size)
    megatron = _megatron_logits(models, probe)
    hf = _hf_logits(AutoModelForCausalLM.from_pretrained(exported, dtype=megatron.dtype), probe)
    return {"largest_logit": megatron.abs().max().item(), "export_logit_difference": (hf - megatron).abs().max().item()}


def load_checkpoint(iteration_dir: Path, cpu: bool) -> list:
    """A saved iter_* checkpoint as Megatron models, built from its own run_config.yaml, with the ModelOpt state
    (quantizers) it holds restored."""
    from megatron.bridge.training.model_load_save import build_and_load_model, load_model_config
    from megatron.bridge.training.post_training.checkpointing import has_modelopt_state

    from nemotron_assets.steps.megatron_bridge import no_te

    config, mlm_args = load_model_config(str(iteration_dir))
    if not no_te.has_transformer_engine():
        no_te.local_provider(config)
    # ModelOpt's restore calibrates each weight quantizer once on the weights before they are loaded: they must be
    # numbers (initialized), not uninitialized memory
    config.perform_initialization = has_modelopt_state(str(iteration_dir))
    models = build_and_load_model(str(iteration_dir), config, None, mlm_args, False, cpu, True)
    return models if isinstance(models, list) else [models]


def _parallelism(provider, args: SimpleNamespace) -> None:
    from nemotron_assets.steps.megatron_bridge import no_te

    if not no_te.has_transformer_engine():
        no_te.local_provider(provider)
    provider.tensor_model_parallel_size = args.tp
    provider.pipeline_model_parallel_size = args.pp
    if getattr(provider, "num_moe_experts", None):
        provider.expert_model_parallel_size = args.ep
        provider.expert_tensor_parallel_size = args.etp


def _probe(vocab_size: int):
    import torch

    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (1, PROBE_TOKENS), generator=generator)


def _hf_logits(model, probe):
    import torch

    model.float().eval()
    with torch.no_grad():
        return model(probe).logits.float()


def _megatron_logits(models, probe):
    """The Megatron model's logits in float32."""
    model = models[0]
    model.float().eval()
    return megatron_forward(model, probe).float().cpu()


def megatron_forward(model, tokens, labels=None, grad: bool = False):
    """A GPT model's forward on [batch, tokens] ids (explicit causal mask: the default one is built on CUDA): the
    logits, or with `labels` the per-token loss; without gradients unless `grad` (training)."""
    import torch

    device = next(model.parameters()).device
    tokens = tokens.to(device)
    positions = torch.arange(tokens.shape[1], device=device).unsqueeze(0)
    mask = torch.triu(torch.ones(tokens.shape[1], tokens.shape[1], dtype=torch.bool, device=device), 1)[None, None]
    with torch.set_grad_enabled(grad):
        return model(tokens, positions, mask, labels=None if labels is None else labels.to(device))
