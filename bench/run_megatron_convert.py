"""Conversion time and peak memory of convert/hf_to_megatron and convert/megatron_to_hf on CPU (tiny Llama), against
the same Megatron-Bridge conversions by hand (no checks, no gate), measured in the same run.

    python bench/run_megatron_convert.py [--repeats 2]        # writes results/megatron_convert.json

Each measurement is a fresh process tree, timed from start to exit; peak memory is the largest resident set of
any process in it (wait4's ru_maxrss; the steps run the conversion in a child process). By hand:
what `AutoBridge.import_ckpt` / `export_ckpt` do (provider -> model -> `save_megatron_model`; load ->
`save_hf_pretrained`), with the same Transformer-Engine-free import, local-layer provider and one-process group as
the steps (the one-call `import_ckpt` itself refuses to build a model without TE: `apply_rope_fusion`). The steps add their checks and the
fidelity gate (HF -> Megatron -> HF round trip; Megatron vs exported logits).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
BY_HAND = """
import sys
from nemotron_assets.steps.megatron_bridge import no_te
if __name__ == "__main__":
    no_te.import_bridge()
    no_te.init_distributed()
    from megatron.bridge import AutoBridge
    bridge = AutoBridge.from_hf_pretrained(sys.argv[2])
    if sys.argv[1] == "import":
        provider = no_te.local_provider(bridge.to_megatron_provider(load_weights=True))
        provider.finalize()
        models = provider.provide_distributed_model(wrap_with_ddp=False, use_cpu_initialization=True)
        bridge.save_megatron_model(models, sys.argv[3], hf_tokenizer_path=sys.argv[2])
    else:
        from nemotron_assets.steps.megatron_bridge.convert_job import load_checkpoint
        bridge.save_hf_pretrained(load_checkpoint(__import__("pathlib").Path(sys.argv[4]), True), sys.argv[3])
"""
STEP = """
import json, logging, sys
from pathlib import Path
from nemotron_assets.catalog import CATALOG
from nemotron_assets.steps import InputArtifact, StepRun, step_function
if __name__ == "__main__":
    step, source, out, port = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    spec = CATALOG.step(step)
    params = spec.preset_values("tiny") | json.loads(sys.argv[5])
    out.mkdir(parents=True)
    inputs = {port: InputArtifact(source.name, port, source, "v")}
    step_function(spec)(StepRun(spec, params, inputs, out, out.parent / "work", 0, logging.getLogger(step)))
"""


def measure(command: list[str]) -> dict:
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{command[:4]} failed:\n{process.stderr.read()[-3000:]}")
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=BENCH.parent / ".nemotron" / "fixtures" / "tiny-llama")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    hf = str(args.model.resolve())
    runs: dict[str, list[dict]] = {"by_hand_import": [], "step_import": [], "by_hand_export": [], "step_export": []}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            root = Path(scratch) / str(repeat)
            imported, step_imported = root / "by_hand_import", root / "step_import" / "out"
            py = [sys.executable, "-c"]
            runs["by_hand_import"].append(measure([*py, BY_HAND, "import", hf, str(imported)]))
            step = [*py, STEP, "convert/hf_to_megatron", hf, str(step_imported), "checkpoint_hf", "{}"]
            runs["step_import"].append(measure(step))
            iteration = str(imported / "iter_0000000")
            runs["by_hand_export"].append(
                measure([*py, BY_HAND, "export", hf, str(root / "by_hand_export"), iteration])
            )
            export = json.dumps({"hf_model_id": hf})
            step = [
                *py,
                STEP,
                "convert/megatron_to_hf",
                iteration,
                str(root / "step_export" / "out"),
                "checkpoint_megatron",
            ]
            runs["step_export"].append(measure([*step, export]))
            print(json.dumps({k: v[-1] for k, v in runs.items()}), flush=True)
    median = {k: {m: statistics.median(r[m] for r in v) for m in ("seconds", "peak_rss_mb")} for k, v in runs.items()}
    result = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "model": hf},
        "runs": runs,
        "median": median,
        "ratios": {
            kind: {
                "time": round(median[f"step_{kind}"]["seconds"] / median[f"by_hand_{kind}"]["seconds"], 3),
                "peak_memory": round(
                    median[f"step_{kind}"]["peak_rss_mb"] / median[f"by_hand_{kind}"]["peak_rss_mb"], 3
                ),
            }
            for kind in ("import", "export")
        },
    }
    (BENCH / "results" / "megatron_convert.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({"median": median, "ratios": result["ratios"]}))


if __name__ == "__main__":
    main()
