"""The catalog's "prune, then distill afterward if quality matters" on one GPU (issue 19), as the `minitron`
pipeline runs it, each stage through its step function, and the held-out NLL of the original, the pruned and the
distilled model measured the same way on the same rows, which no stage trained or calibrated on.

1. data: bench/corpus.py's seeded chat corpus, split by rows into a split artifact (splits/train, splits/test: the
   last `--test-rows` rows), as data_prep/split lays it out; every step reads the train split only.
2. original: a Llama (TEACHER, the tiny tokenizer) trained from random init on the train split with a plain
   transformers loop (AdamW, bf16 autocast), so that it has something to lose.
3. pruned: optimize/modelopt/prune with args.prune_export_config = SHAPE, calibrated on train rows.
4. distilled: optimize/modelopt/distill of the pruned model with the original as teacher, on the train split; its
   hf/ export is the distilled model.
5. held-out NLL: mean token NLL of each model in transformers on the GPU over the test split (bf16), beside the
   steps' own figures.

    python3 bench/run_minitron_gpu.py --tokenizer DIR --out DIR   # writes DIR/minitron_gpu.json as it goes

Needs the prune step's stack (Megatron-Core >= 0.17, bench/README.md "Minitron pruning").
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import platform
import shutil
import time
from pathlib import Path

import torch
from corpus import chat_corpus
from verify_megatron_gpu import stage
from verify_prune_gpu import PACKAGES, on_the_gpu

from nemotron_assets.artifacts.files import HELD_OUT, SPLITS_DIR, TRAIN
from nemotron_assets.steps.modelopt.common import record_text

TEACHER = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 64,
    "vocab_size": 512,
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}
SHAPE = {"hidden_size": 384, "ffn_hidden_size": 1024, "num_layers": 6}
SEQ = 256
PRUNE = {"args.prune_export_config": SHAPE, "args.calib_num_samples": 256, "holdout_size": 64, "args.seq_length": SEQ}
DISTILL = {"args.train_iters": 300, "args.gbs": 16, "args.lr": 3e-4, "holdout_size": 64, "args.seq_length": SEQ}


def split_corpus(megabytes: float, test_rows: int, out: Path) -> Path:
    """The seeded chat corpus as a split artifact: the last `test_rows` rows are the test split."""
    rows = Path(chat_corpus(megabytes)["path"]).read_text().splitlines()
    data = out / "chat_split"
    for split, part in ((TRAIN, rows[:-test_rows]), (HELD_OUT, rows[-test_rows:])):
        (data / SPLITS_DIR / split).mkdir(parents=True)
        (data / SPLITS_DIR / split / "chat.jsonl").write_text("\n".join(part) + "\n")
    return data


def texts(data: Path, split: str, tokenizer) -> list[str]:
    lines = (data / SPLITS_DIR / split / "chat.jsonl").read_text().splitlines()
    return [record_text(json.loads(line), tokenizer) for line in lines]


def train_original(tokenizer_dir: Path, train: list[str], steps: int, out: Path) -> tuple[Path, list[float]]:
    """TEACHER trained from random init on the train texts (packed into SEQ windows, batch 64); saved in bf16 with
    the tokenizer and chat template. Returns its directory and the loss every 50 steps."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = [i for text in train for i in [*tokenizer(text)["input_ids"], tokenizer.eos_token_id]]
    tokens = torch.tensor(ids, device="cuda")
    windows = tokens[: len(tokens) // (SEQ + 1) * (SEQ + 1)].view(-1, SEQ + 1)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**TEACHER)).cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, fused=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 1e-3, total_steps=steps, pct_start=0.05)
    losses = []
    for step in range(steps):
        batch = windows[torch.randint(len(windows), (64,), device="cuda")]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(batch, labels=batch, use_cache=False).loss  # the model shifts the labels
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == steps - 1:
            losses.append(round(loss.item(), 4))
    directory = out / "original"
    model.to(torch.bfloat16).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    for name in ("chat_template.jinja",):
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, directory / name)
    return directory, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokenizer", type=Path, required=True, help="the tiny Llama (tokenizer + chat template)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--corpus-mb", type=float, default=4.0)
    parser.add_argument("--test-rows", type=int, default=128)
    parser.add_argument("--train-steps", type=int, default=1000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    from transformers import AutoTokenizer

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    report = out / "minitron_gpu.json"
    result: dict = {
        "device": torch.cuda.get_device_name(),
        "python": platform.python_version(),
        "versions": {p: importlib.metadata.version(p) for p in PACKAGES},
        "teacher_config": TEACHER,
        "prune": PRUNE,
        "distill": DISTILL,
    }

    def save() -> None:
        report.write_text(json.dumps(result, indent=2, default=str))

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    data = split_corpus(args.corpus_mb, args.test_rows, out)
    train, test = texts(data, TRAIN, tokenizer), texts(data, HELD_OUT, tokenizer)
    result["rows"] = {"train": len(train), "test": len(test)}
    started = time.perf_counter()
    original, losses = train_original(args.tokenizer.resolve(), train, args.train_steps, out)
    result["original"] = {"train_seconds": round(time.perf_counter() - started, 1), "train_loss": losses}
    result["original"] |= on_the_gpu(original, test, SEQ)
    save()
    models = {"original": original}
    stages = (
        ("pruned", "optimize/modelopt/prune", PRUNE, lambda: {"checkpoint_hf": original}),
        ("distilled", "optimize/modelopt/distill", DISTILL | {"args.teacher_hf_path": str(original)},
         lambda: {"checkpoint_hf": models["pruned"]}),
    )  # fmt: skip
    for name, step, params, inputs in stages:
        try:
            record = stage(step, "tiny", params, inputs() | {"training_jsonl": data}, out / name, 1)
            models[name] = Path(record["path"]) / ("hf" if step.endswith("distill") else "")
            record |= on_the_gpu(models[name], test, SEQ)
        except Exception as e:  # record it and stop: the next stage needs this one's model
            logging.exception(name)
            result[name] = {"error": f"{type(e).__name__}: {e}"[:2000]}
            save()
            break
        result[name] = record
        save()
    result["held_out_nll"] = {name: result[name].get("hf_nll") for name in ("original", "pruned", "distilled")}
    save()
    print(json.dumps(result["held_out_nll"]))


if __name__ == "__main__":
    main()
