"""Job backend of convert/merge_lora: load the base, apply the adapter with peft, merge, and measure on a probe text
how far the merged model's logits are from the adapter-on-base logits. The spec's args: base, adapter, output,
dtype, probe. Writes the merged model into `output` and report.json (differences, parameters) into the work
directory; the launching step applies the tolerance."""

from __future__ import annotations

import json
from pathlib import Path

from nemotron_assets.job import JobSpec


def run(spec: JobSpec) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    args = spec.args
    tokenizer = AutoTokenizer.from_pretrained(args["base"])
    base = AutoModelForCausalLM.from_pretrained(args["base"], dtype=getattr(torch, args["dtype"]))
    model = PeftModel.from_pretrained(base, args["adapter"])
    model.eval()
    probe = tokenizer(args["probe"], return_tensors="pt")
    with torch.no_grad():
        adapted = model(**probe).logits
        merged = model.merge_and_unload()
        difference = (merged(**probe).logits - adapted).abs().max().item()
    merged.save_pretrained(args["output"], safe_serialization=True)
    tokenizer.save_pretrained(args["output"])
    report = {
        "max_logit_difference": difference,
        "largest_logit": adapted.abs().max().item(),
        "parameters": sum(t.numel() for t in merged.parameters()),
    }
    (Path(spec.work_dir) / "report.json").write_text(json.dumps(report))
