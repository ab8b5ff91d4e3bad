"""The AutoModel GPU benchmark's baseline: the same Llama and token shards through a plain transformers loop.

    python bench/gpu_baseline.py '{"model": DIR, "shard": PREFIX, "seq_length": 2048, "batch": 8, "steps": 30,
                                   "warmup": 5, "lr": 3e-4, "seed": 1234, "compile": true}'

One GPU, bf16 weights, SDPA attention, fused AdamW, gradient clipping at 1.0 (as the recipe does). Samples are
random windows of the uint16 shard. Only the steps after the warm-up are timed (CUDA-synchronised at both ends);
prints one JSON line: tokens/s, losses, peak memory.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM


def windows(prefix: str, seq_length: int, batch: int, seed: int) -> Iterator[torch.Tensor]:
    tokens = np.memmap(f"{prefix}.bin", dtype=np.uint16, mode="r")
    rng = np.random.default_rng(seed)
    while True:
        starts = rng.integers(0, len(tokens) - seq_length, batch)
        yield torch.from_numpy(np.stack([tokens[s : s + seq_length] for s in starts]).astype(np.int64))


def main() -> None:
    spec = json.loads(sys.argv[1])
    torch.manual_seed(spec["seed"])
    config = AutoConfig.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa").cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec["lr"], fused=True)
    forward = torch.compile(model) if spec["compile"] else model
    data = windows(spec["shard"], spec["seq_length"], spec["batch"], spec["seed"])

    def step() -> torch.Tensor:
        ids = next(data).cuda(non_blocking=True)
        loss = forward(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    started = time.perf_counter()
    warmup = [step() for _ in range(spec["warmup"])]
    torch.cuda.synchronize()
    warmup_s = time.perf_counter() - started
    started = time.perf_counter()
    losses = [step() for _ in range(spec["steps"])]
    torch.cuda.synchronize()
    wall = time.perf_counter() - started
    tokens = spec["steps"] * spec["batch"] * spec["seq_length"]
    result = {
        "tokens_per_second": tokens / wall,
        "timed_steps": spec["steps"],
        "timed_s": wall,
        "warmup_s": warmup_s,
        "losses": [round(float(x), 4) for x in warmup + losses],
        "parameters": sum(p.numel() for p in model.parameters()),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
