"""The packed attention's two paths train alike on the GPU (issue 16, item 4): a small Megatron-Core GPT built the way
the TE-free steps build it (no_te.local_provider: local layers, PackedDotProductAttention), five AdamW steps on
packed bins from the same initial weights, once through PyTorch's varlen flash kernel and once through the
dense-mask SDPA path. Prints one JSON line: both loss curves and their largest relative difference.

    torchrun-free: python3 bench/verify_packed_attention_gpu.py PACKED_DIR [--steps 5]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow.parquet as pq
import torch

from nemotron_assets.steps.megatron_bridge import no_te

TOLERANCE = 2e-2  # relative, per step: bf16 compute, two kernels with different accumulation orders


def bins(packed: Path, count: int) -> list[dict[str, torch.Tensor]]:
    """The first `count` bins: tokens, next-token labels, loss mask, per-sequence positions and cu_seqlens."""
    table = pq.read_table(sorted((packed / "splits" / "train").glob("*.parquet"))[0])
    out = []
    for ids, mask, starts in zip(
        *(table[c].to_pylist()[:count] for c in ("input_ids", "loss_mask", "seq_start_id")), strict=True
    ):
        ids = torch.tensor(ids)
        cu = torch.tensor([*starts, len(ids)], dtype=torch.int32)
        positions = torch.arange(len(ids)) - torch.repeat_interleave(cu[:-1], cu.diff()).long()
        out.append(
            {
                "tokens": ids[None].cuda(),
                "labels": torch.cat([ids[1:], ids[:1]])[None].cuda(),
                "mask": torch.tensor(mask, dtype=torch.float32)[None].cuda(),
                "positions": positions[None].cuda(),
                "cu": cu.cuda(),
                "longest": int(cu.diff().max()),
            }
        )
    return out


SMALL = {"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 4, "num_attention_heads": 8,
         "num_key_value_heads": 2}  # fmt: skip


def model(vocab: int, shape: dict = SMALL):
    """A Llama-shaped Megatron-Core GPT (`shape` in HF config names), bf16, as the TE-free steps build it."""
    from megatron.bridge.models.gpt_provider import GPTModelProvider

    heads = shape["num_attention_heads"]
    provider = GPTModelProvider(
        num_layers=shape["num_hidden_layers"], hidden_size=shape["hidden_size"],
        ffn_hidden_size=shape["intermediate_size"], num_attention_heads=heads,
        num_query_groups=shape["num_key_value_heads"], kv_channels=shape["hidden_size"] // heads,
        vocab_size=vocab, seq_length=2048, normalization="RMSNorm", gated_linear_unit=True,
        activation_func=torch.nn.functional.silu, position_embedding_type="rope", add_bias_linear=False,
        share_embeddings_and_output_weights=False, hidden_dropout=0.0, attention_dropout=0.0, bf16=True,
        params_dtype=torch.bfloat16, make_vocab_size_divisible_by=128,
    )  # fmt: skip
    no_te.local_provider(provider).finalize()
    return provider.provide_distributed_model(wrap_with_ddp=False, mixed_precision_wrapper=None)[0]


def train(net, state: dict, data: list[dict], attention) -> list[float]:
    from megatron.core.packed_seq_params import PackedSeqParams

    no_te.varlen_attention = attention  # the packed class looks its CUDA kernel up at call time
    net.load_state_dict(state)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    losses = []
    for batch in data:
        params = PackedSeqParams(
            qkv_format="thd", cu_seqlens_q=batch["cu"], cu_seqlens_kv=batch["cu"],
            max_seqlen_q=batch["longest"], max_seqlen_kv=batch["longest"],
        )  # fmt: skip
        per_token = net(batch["tokens"], batch["positions"], None, labels=batch["labels"], packed_seq_params=params)
        loss = (per_token.float() * batch["mask"]).sum() / batch["mask"].sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("packed", type=Path)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    no_te.import_bridge()
    no_te.init_distributed()
    data = bins(args.packed, args.steps)
    vocab = int(max(int(b["tokens"].max()) for b in data)) + 1
    net = model(vocab)
    state = {k: v.clone() for k, v in net.state_dict().items() if isinstance(v, torch.Tensor)}
    varlen = train(net, state, data, no_te.varlen_attention)
    dense = train(net, state, data, no_te.dense_packed_attention)
    worst = max(abs(a - b) / abs(b) for a, b in zip(varlen, dense, strict=True))
    result = {"varlen_losses": varlen, "dense_losses": dense, "max_relative_difference": worst}
    print(json.dumps(result | {"tolerance": TOLERANCE, "same": worst <= TOLERANCE}))


if __name__ == "__main__":
    main()
