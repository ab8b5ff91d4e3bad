"""ModelOpt's Minitron pruning on Megatron-Core's local (non-Transformer-Engine) layers.

ModelOpt's `mcore_minitron` mode is written for models built with TE layer specs: each layer's input layernorm is
fused into its first linear layer (TE's LayerNormLinear, asked for its layernorm output to rank hidden channels),
attention runs in TE's DotProductAttention (head pruning), and norms are TE's. Without TE (the GPU images here),
Megatron-Core builds the local spec instead: separate torch RMSNorm modules, plain column/row-parallel linears, and
Megatron-Core's own attention. `support_local_layers()` adds what that spec needs, leaving the TE path as it is:

- torch's RMSNorm becomes a dynamic module over the shared hidden_size (weights and normalized shape sliced);
- hidden channels are ranked by the outputs of the separate input and pre-MLP layernorms (the same quantities TE's
  fused kernel returns: the normalized activations feeding the first linear of attention and MLP);
- the local linears get TE's size names (`prepare()`);
- attention heads are pruned only where the core attention is TE's: with local attention, `num_attention_heads`
  is not a prunable dimension (`LOCAL_FIXED`); hidden size, MLP width and depth are.
"""

from __future__ import annotations

from functools import partial
from types import ModuleType

LOCAL_FIXED = ("num_attention_heads",)  # dimensions Minitron cannot prune on local layers


def uses_local_layers(model) -> bool:
    """Whether a Megatron-Core GPT model was built from the local (non-TE) layer spec."""
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    return any(isinstance(m, DotProductAttention) for m in model.modules())


def prepare(model) -> None:
    """Give the local attention projections the size names ModelOpt reads from TE's linears (`in_features`,
    `out_features`), so attention converts with its hidden-size input and output."""
    from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear

    for m in model.modules():
        if isinstance(m, (ColumnParallelLinear, RowParallelLinear)) and not hasattr(m, "out_features"):
            m.in_features, m.out_features = m.input_size, m.output_size


def support_local_layers(minitron: ModuleType) -> None:
    """Teach ModelOpt's Minitron plugin (the imported `mcore_minitron` module) Megatron-Core's local layers; once."""
    if getattr(minitron, "_local_layers", False):
        return
    import torch
    from modelopt.torch.nas.modules.norm import _DynamicLayerNorm
    from modelopt.torch.nas.plugins import megatron as nas_megatron
    from modelopt.torch.nas.registry import DMRegistry

    class DynamicTorchRMSNorm(_DynamicLayerNorm):
        """torch.nn.RMSNorm over a given (shared) hidden_size hparam."""

        def _setup(self, *, num_features):
            self._register_hparam("num_features", num_features)
            self._register_dynamic_attribute("weight", self._cut_to_active_features)
            self._register_dynamic_attribute("normalized_shape", self._get_normalized_shape)

    if torch.nn.RMSNorm not in DMRegistry:
        DMRegistry.register({torch.nn.RMSNorm: "torch.nn.RMSNorm"})(DynamicTorchRMSNorm)

    te_attention = nas_megatron.TEDotProductAttention
    prunes_heads = nas_megatron._DynamicSelfAttention._prunes_attention_heads

    def prunes_attention_heads(self) -> bool:
        return isinstance(self.core_attention, te_attention) and prunes_heads(self)

    nas_megatron._DynamicSelfAttention._prunes_attention_heads = prunes_attention_heads

    te_importance = minitron._register_hidden_size_importance

    def register_hidden_size_importance(module, registry) -> None:
        if not uses_local_layers(module):
            te_importance(module, registry)
            return
        _local_hidden_size_importance(module, registry)

    minitron._register_hidden_size_importance = register_hidden_size_importance
    minitron._local_layers = True


def _local_hidden_size_importance(module, registry) -> None:
    """Rank hidden channels by the L2 norm (over samples) of the mean absolute normalized activation (over
    tokens) at every layer's input and pre-MLP layernorm, summed over those norms and the pipeline stages."""
    import torch
    from megatron.core.transformer.identity_op import IdentityOp

    module._register_temp_attribute("_activations", {})

    def collect(model, norm, inputs, output) -> None:
        magnitude = output.detach().float().abs().mean(dim=0)  # [s, b, h] -> [b, h]
        squares = magnitude.pow(2).sum(dim=0)  # summed over the batch's samples
        key = id(norm)
        model._activations[key] = model._activations[key] + squares if key in model._activations else squares

    for layer in module.decoder.layers:
        for norm in (getattr(layer, "input_layernorm", None), getattr(layer, "pre_mlp_layernorm", None)):
            if norm is not None and not isinstance(norm, IdentityOp):
                registry.register_hook(norm, partial(collect, module), hook_type="forward")

    def importance():
        assert module._activations, "no activations collected for the hidden-size importance"
        scores = torch.stack([squares.sqrt() for squares in module._activations.values()]).sum(dim=0)
        torch.distributed.all_reduce(scores, op=torch.distributed.ReduceOp.SUM)
        return scores

    registry.register_importance(module, "hidden_size", importance)
