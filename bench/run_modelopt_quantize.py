"""optimize/modelopt/quantize on a real small LLM (SmolLM2-135M-Instruct, CPU fake-quant): how much held-out quality
each recipe costs and how much smaller the deployable export is, against the unquantized model in the same run.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/run_modelopt_quantize.py   # ~5 min here; -> results/modelopt_quantize.json

The step runs through the real stage runner (child process, ModelOpt calibration on the fixture chat rows, export).
Baselines, measured in the same run by the step itself: the unquantized model's mean token NLL on the same held-out
rows (quality) and the source checkpoint's weight bytes (size).
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from nemotron_assets.execution import run_stage
from nemotron_assets.paths import PROJECT_ROOT
from nemotron_assets.pipelines import PipelineSpec
from resources.artifact_store import ArtifactStore

MODEL = PROJECT_ROOT / ".nemotron" / "fixtures" / "smollm2-135m-instruct"
CHAT = PROJECT_ROOT / "nemotron_assets" / "fixtures" / "data" / "tiny_chat.jsonl"
RECIPES = ("fp8", "int8_sq")
EXPORTED = ("fp8",)  # ModelOpt has no Megatron -> HF export of SmoothQuant
SETTINGS = {"args.calib_size": 32, "holdout_size": 16, "calib_max_tokens": 256, "deploy_gpu": "H100", "max_drop": 1.0}


def weight_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.glob("*.safetensors"))


def quantize(recipe: str, root: Path) -> dict:
    pipeline = PipelineSpec.parse(
        {
            "name": "bench",
            "description": "quantize SmolLM2",
            "sources": [
                {"name": "model", "type": "checkpoint_hf", "path": str(MODEL)},
                {"name": "data", "type": "training_jsonl", "path": str(CHAT)},
            ],
            "stages": [
                {
                    "name": recipe,
                    "step": "optimize/modelopt/quantize",
                    "consumes": {"checkpoint_hf": "model", "training_jsonl": "data"},
                    "config": SETTINGS | {"args.export_quant_cfg": recipe, "hf_export": recipe in EXPORTED},
                }
            ],
        }
    )
    stage = pipeline.stage(recipe)
    started = time.perf_counter()
    result = run_stage(pipeline, stage, pipeline.params(stage), ArtifactStore(root=str(root)), "local_cpu")
    seconds = time.perf_counter() - started
    stats = result.stats
    return {
        "recipe": recipe,
        "quant_algo": stats.get("quant_algo"),
        "nll_unquantized": stats["nll_before"],
        "nll_quantized": stats["nll_after"],
        "relative_nll_increase": stats["relative_nll_increase"],
        "export_bytes": weight_bytes(result.path / "hf"),
        "export_to_source_bytes": weight_bytes(result.path / "hf") / weight_bytes(MODEL),
        "step_seconds": round(seconds, 1),
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as root:
        rows = [quantize(recipe, Path(root)) for recipe in RECIPES]
    out = {
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "versions": {name: version(name) for name in ("nvidia-modelopt", "torch", "transformers")},
        "model": {
            "path": str(MODEL.relative_to(PROJECT_ROOT)),
            "source_bytes": weight_bytes(MODEL),
            "dtype": "float32",
        },
        "settings": SETTINGS,
        "results": rows,
    }
    path = Path(__file__).parent / "results" / "modelopt_quantize.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
