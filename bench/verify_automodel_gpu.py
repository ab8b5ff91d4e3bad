"""sft/automodel and peft/automodel for real on one GPU: the 1.1B Llama of run_automodel_gpu.py, saved with random
bf16 weights, fine-tuned on the shipped chat set through the step functions (bench/child.py, torchrun, gpus=1).
The full checkpoint must load in transformers and the adapter in peft on its recorded base, both on the GPU.

    python3 bench/verify_automodel_gpu.py --out DIR        # writes DIR/automodel_gpu_steps.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from run_automodel_gpu import BENCH, prepare

CHAT = BENCH.parent / "nemotron_assets" / "fixtures" / "data" / "tiny_chat.jsonl"
COMMON = {
    "seq_length": 512,
    "precision": "bf16",
    "step_scheduler.global_batch_size": 8,
    "step_scheduler.local_batch_size": 8,
    "step_scheduler.max_steps": 20,
    "step_scheduler.num_epochs": 10,
    "step_scheduler.ckpt_every_steps": 10,
    "step_scheduler.val_every_steps": 10**6,
}
SHARD_TOKENS = 2**16  # prepare() also writes a token shard; these steps read the chat set instead
STEPS = {"sft/automodel": {"optimizer.lr": 1e-5}, "peft/automodel": {"optimizer.lr": 1e-3}}


def save_random_weights(model: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(model)
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(model)


def train(step: str, model: Path, out: Path) -> dict:
    work = out / step.replace("/", "_")
    params = {"model.pretrained_model_name_or_path": str(model)} | COMMON | STEPS[step]
    spec = {"mode": "step", "step": step, "inputs": {"training_jsonl": str(CHAT)}, "params": params, "gpus": 1}
    spec |= {"output_dir": str(work / "output"), "work_dir": str(work / "work")}
    with (out / f"{work.name}.log").open("w") as log:
        done = subprocess.run(
            [sys.executable, str(BENCH / "child.py"), json.dumps(spec)], stdout=subprocess.PIPE, stderr=log, text=True
        )
    if done.returncode:
        raise SystemExit(f"{step} failed; see {log.name}")
    return json.loads(done.stdout.splitlines()[-1]) | {"output": str(work / "output")}


def loads_on_the_gpu(step: str, model: Path, output: Path) -> dict:
    """Forward one batch through what the step published: the HF checkpoint, or the adapter on its base."""
    from transformers import AutoModelForCausalLM

    if step == "peft/automodel":
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16).cuda()
        loaded = PeftModel.from_pretrained(base, output)
        kind = f"adapter r={loaded.peft_config['default'].r} on {model.name}"
    else:
        loaded = AutoModelForCausalLM.from_pretrained(output, dtype=torch.bfloat16).cuda()
        kind = "full checkpoint"
    with torch.no_grad():
        logits = loaded(torch.arange(3, 67, device="cuda")[None]).logits
    return {"loaded": kind, "logits_finite": bool(torch.isfinite(logits).all())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model, _ = prepare(args.out / "cache", tokens=SHARD_TOKENS)
    save_random_weights(model)
    results = {}
    for step in STEPS:
        result = train(step, model, args.out)
        results[step] = {"stats": result["stats"], "wall_s": result["wall_s"]}
        results[step] |= loads_on_the_gpu(step, model, Path(result["output"]))
        print(step, json.dumps(results[step]), flush=True)
    document = {"gpu": torch.cuda.get_device_name(), "settings": COMMON, "steps": STEPS, "results": results}
    (args.out / "automodel_gpu_steps.json").write_text(json.dumps(document, indent=1))


if __name__ == "__main__":
    main()
