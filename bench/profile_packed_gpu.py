"""Where the packed SFT path loses time (issue 16): TinyLlama-1.1B's architecture built the way the TE-free steps
build it (no_te.local_provider), forward + backward + AdamW on the same 8 x 2048 tokens, once packed (THD: one
sequence of 16384 tokens cut into conversations by cu_seqlens, RoPE positions per conversation, the varlen kernel)
and once unpacked ([8, 2048] with SDPA's causal kernel), each timed over steps after warm-up; then one profiled step
of each: the CUDA time per kernel family and the host syncs (aten::item, cudaStreamSynchronize) per step; then the
packed step again with Megatron-Core's own THD RoPE (a host sync in every attention layer) instead of
no_te.thd_rope. Prints one JSON document.

    python3 bench/profile_packed_gpu.py [--steps 10] [--doc-tokens 300] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from run_automodel_gpu import LLAMA_1B, SEQ
from verify_packed_attention_gpu import model

from nemotron_assets.steps.megatron_bridge import no_te

ROWS = 8


def batches(doc_tokens: int, vocab: int) -> dict[str, dict]:
    """The same tokens twice: packed THD (conversations of about `doc_tokens`, none crossing a 2048 boundary) and
    unpacked [ROWS, SEQ]."""
    from megatron.core.packed_seq_params import PackedSeqParams

    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, vocab, (ROWS * SEQ,), generator=generator)
    lengths = []
    for _ in range(ROWS):
        left = SEQ
        while left:
            take = min(left, int(torch.randint(doc_tokens // 2, doc_tokens * 3 // 2, (1,), generator=generator)))
            lengths.append(take)
            left -= take
    cu = torch.cumsum(torch.tensor([0, *lengths]), 0).to(torch.int32)
    positions = torch.arange(ROWS * SEQ) - torch.repeat_interleave(cu[:-1], cu.diff()).long()
    labels = torch.roll(tokens, -1)
    packed = PackedSeqParams(
        qkv_format="thd", cu_seqlens_q=cu.cuda(), cu_seqlens_kv=cu.cuda(),
        max_seqlen_q=int(cu.diff().max()), max_seqlen_kv=int(cu.diff().max()),
    )  # fmt: skip
    return {
        "packed": {
            "args": (tokens[None].cuda(), positions[None].cuda(), None),
            "kwargs": {"labels": labels[None].cuda(), "packed_seq_params": packed},
            "documents": len(lengths),
        },
        "unpacked": {
            "args": (tokens.view(ROWS, SEQ).cuda(), torch.arange(SEQ).expand(ROWS, SEQ).cuda(), None),
            "kwargs": {"labels": labels.view(ROWS, SEQ).cuda()},
        },
    }


def step(net, optimizer, batch: dict) -> None:
    loss = net(*batch["args"], **batch["kwargs"]).float().mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def timed(net, optimizer, batch: dict, steps: int) -> float:
    for _ in range(3):
        step(net, optimizer, batch)
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step(net, optimizer, batch)
    torch.cuda.synchronize()
    return ROWS * SEQ * steps / (time.perf_counter() - started)


def profiled(net, optimizer, batch: dict, top: int = 25) -> dict:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step(net, optimizer, batch)
        torch.cuda.synchronize()
    events = prof.key_averages()
    cuda = sorted(events, key=lambda e: e.self_device_time_total, reverse=True)[:top]
    syncs = {
        e.key: e.count for e in events if e.key in ("aten::item", "aten::_local_scalar_dense", "cudaStreamSynchronize")
    }
    return {
        "cuda_ms_total": round(sum(e.self_device_time_total for e in events) / 1e3, 2),
        "top_kernels_ms": {e.key[:90]: [round(e.self_device_time_total / 1e3, 2), e.count] for e in cuda},
        "host_syncs": syncs,
        "cpu_ops_top": {
            e.key[:60]: round(e.self_cpu_time_total / 1e3, 2)
            for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--doc-tokens", type=int, default=300)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    no_te.import_bridge()
    from megatron.core.models.common.embeddings import rope_utils

    no_te.init_distributed()
    net = model(LLAMA_1B["vocab_size"], LLAMA_1B)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-5, fused=True)
    data = batches(args.doc_tokens, LLAMA_1B["vocab_size"])
    result: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "tokens_per_step": ROWS * SEQ}
    for name, batch in data.items():
        result[name] = {"tokens_per_s": round(timed(net, optimizer, batch, args.steps))}
        result[name] |= profiled(net, optimizer, batch) | {"documents": batch.get("documents", ROWS)}
    result["packed_vs_unpacked"] = round(result["packed"]["tokens_per_s"] / result["unpacked"]["tokens_per_s"], 3)
    rope_utils._apply_rotary_pos_emb_thd = no_te.thd_rope.library  # Megatron-Core's own THD RoPE (host syncs)
    library = {"tokens_per_s": round(timed(net, optimizer, data["packed"], args.steps))}
    result["packed_library_rope"] = library | profiled(net, optimizer, data["packed"])
    result["packed_vs_library_rope"] = round(result["packed"]["tokens_per_s"] / library["tokens_per_s"], 3)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
