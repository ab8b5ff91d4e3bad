"""optimize/modelopt/prune for real on one GPU, through the step function (as the stage runner calls it; the job
starts torchrun itself), each pruned checkpoint_hf checked by its contract, loaded in transformers on the GPU, and
its shape or parameter count compared with what was asked; the export's held-out NLL in transformers is compared
with the job's Megatron-side NLL of the pruned model (the export carries the pruned weights).

Two models, each pruned twice, once with args.prune_export_config (an exact shape) and once with
args.prune_target_params (Minitron's NAS search, candidates scored by held-out NLL):
- tiny: the tiny Llama (123.7k parameters; its tokenizer);
- llama300m: a random-weight Llama of ~315M parameters built here on the GPU (hidden 1024, MLP 4096, 20 layers,
  16 heads / 8 KV groups, tied embeddings; the tiny tokenizer), bf16.
Calibration and held-out rows: the shipped tiny chat data (training_jsonl, 48 rows).

    python3 bench/verify_prune_gpu.py --model DIR --data FILE --out DIR [--only tiny|llama300m]
    # writes DIR/modelopt_gpu_prune.json (and prints one JSON line per stage)

Needs Megatron-Core >= 0.17 with a matching Megatron-Bridge and ModelOpt (bench/README.md, "Minitron pruning").
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

from nemotron_assets.artifacts import validate
from nemotron_assets.catalog import CATALOG
from nemotron_assets.steps import InputArtifact, StepRun, step_function

PRUNE = "optimize/modelopt/prune"
LLAMA_300M = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 20,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "vocab_size": 512,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}
RUNS = {  # model -> (exact shape, parameter target)
    "tiny": ({"ffn_hidden_size": 128, "hidden_size": 48}, 1.0e5),
    "llama300m": ({"hidden_size": 768, "ffn_hidden_size": 3072, "num_layers": 16}, 2.0e8),
}
HF_NAMES = {"hidden_size": "hidden_size", "ffn_hidden_size": "intermediate_size", "num_layers": "num_hidden_layers"}
PACKAGES = ("megatron-core", "megatron-bridge", "nvidia-modelopt", "transformers", "torch")


def stage(name: str, params: dict, inputs: dict[str, Path], out: Path) -> dict:
    """One prune through its step function (tiny preset + params), its output checked by its contract."""
    spec = CATALOG.step(PRUNE)
    artifacts = {port: InputArtifact(path.name, port, path, path.name) for port, path in inputs.items()}
    output, work = out / name / "output", out / name / "work"
    output.mkdir(parents=True)
    run = StepRun(spec, spec.preset_values("tiny") | params, artifacts, output, work, 1, logging.getLogger(name))
    started = time.perf_counter()
    result = step_function(spec)(run)
    record = {
        "seconds": round(time.perf_counter() - started, 1),
        "params": params,
        "stats": result.stats,
        "contract": validate(output, spec.primary_output),
    }
    job = json.loads((work / "job-modelopt.json").read_text())["args"]
    record["on_gpu"] = on_the_gpu(output, job["holdout"], job["max_tokens"])
    print(json.dumps({name: record}), flush=True)
    return record


def on_the_gpu(path: Path, holdout: list[str], max_tokens: int) -> dict:
    """The export in transformers on the GPU: its parameters, config shape, and mean token NLL on the held-out rows
    (bf16, as the job's)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda().eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for text in holdout:
            ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_tokens)["input_ids"].cuda()
            n = ids.shape[1] - 1
            logits = model(ids).logits[0, :-1].float()
            total += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            tokens += n
    config = model.config
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "shape": {hf: getattr(config, hf) for hf in (*HF_NAMES.values(), "num_attention_heads", "num_key_value_heads")},
        "hf_nll": total / tokens,
    }


def build_llama300m(tokenizer_from: Path, out: Path) -> Path:
    """Random bf16 weights of LLAMA_300M, with the tiny model's tokenizer and chat template."""
    from transformers import LlamaConfig, LlamaForCausalLM

    model_dir = out / "llama300m"
    model_dir.mkdir(parents=True)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(LlamaConfig(**LLAMA_300M)).to(torch.bfloat16)
    model.save_pretrained(model_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tokenizer_from / name).exists():
            shutil.copy(tokenizer_from / name, model_dir / name)
    return model_dir


def check(record: dict, shape: dict | None, target: float | None) -> dict:
    """What was asked against what came out."""
    on_gpu, stats = record["on_gpu"], record["stats"]
    verdict = {
        "contract_parameters_match_transformers": record["contract"]["parameters"] == on_gpu["parameters"],
        "hf_nll_minus_job_nll": on_gpu["hf_nll"] - stats["nll_after"],
    }
    if shape:
        verdict["shape_as_asked"] = all(on_gpu["shape"][HF_NAMES[k]] == v for k, v in shape.items() if k in HF_NAMES)
    if target:
        verdict["parameters_within_target"] = on_gpu["parameters"] <= target
    return verdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="the tiny Llama (HF, tokenizer + chat template)")
    parser.add_argument("--data", type=Path, required=True, help="training_jsonl rows for calibration")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", choices=sorted(RUNS), action="append")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    out = args.out.resolve()
    result: dict = {
        "device": torch.cuda.get_device_name(),
        "python": platform.python_version(),
        "versions": {p: importlib.metadata.version(p) for p in PACKAGES},
    }
    models = {"tiny": args.model.resolve()}
    for name in args.only or sorted(RUNS, reverse=True):
        if name == "llama300m":
            started = time.perf_counter()
            models[name] = build_llama300m(models["tiny"], out / "models")
            result["llama300m_build_seconds"] = round(time.perf_counter() - started, 1)
        shape, target = RUNS[name]
        inputs = {"checkpoint_hf": models[name], "training_jsonl": args.data.resolve()}
        for mode, params in (
            ("export_config", {"args.prune_export_config": shape}),
            ("target_params", {"args.prune_export_config": None, "args.prune_target_params": target, "args.top_k": 4}),
        ):
            key = f"{name}_{mode}"
            try:
                record = stage(key, params, inputs, out)
                record["verdict"] = check(record, shape if mode == "export_config" else None,
                                          target if mode == "target_params" else None)  # fmt: skip
            except Exception as e:  # record and go on to the next run
                logging.exception(key)
                record = {"error": f"{type(e).__name__}: {e}"[:2000]}
            result[key] = record
            (out / "modelopt_gpu_prune.json").write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({k: v.get("verdict", v.get("error")) for k, v in result.items() if isinstance(v, dict)}))


if __name__ == "__main__":
    main()
