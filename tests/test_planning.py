"""The planner's routing rules, one table row per rule, and its outputs (JSON, Mermaid, YAML the factory loads)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from conftest import DATA

from nemotron_assets.factory import build_definitions
from nemotron_assets.pipelines import PipelineSpec
from nemotron_assets.planning import Hardware, Have, Intents, Plan, plan

CPU = Hardware(1, 0, "cpu")
H100x2 = Hardware(1, 2, "h100")
H100x4 = Hardware(1, 4, "h100")
H100x8 = Hardware(1, 8, "h100")
H100x16 = Hardware(2, 8, "h100")
H100x32 = Hardware(4, 8, "h100")
H200x16 = Hardware(2, 8, "h200")
B200x8 = Hardware(1, 8, "b200")
A100_40x8 = Hardware(1, 8, "a100-40gb")
A100_80x8 = Hardware(1, 8, "a100-80gb")
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


@dataclass
class Case:
    id: str
    goal: str
    have: list[str] = field(default_factory=list)
    hardware: Hardware = H100x8
    intents: dict = field(default_factory=dict)
    steps: list[str] | None = None  # the plan's steps in order, without eval bookends
    blocked: str | None = None  # a substring of the blocked reason
    warning: str | None = None  # a substring of one warning
    config: dict = field(default_factory=dict)  # {step: {param: value}} the plan must set


CASES = [
    # Megatron-Bridge vs AutoModel, model-aware minimum hardware, fallback to AutoModel + LoRA
    Case("nano3-sft-8xh100-megatron", "sft", ["training_jsonl"], H100x8,
         steps=["data_prep/sft_packing", "sft/megatron_bridge"],
         config={"sft/megatron_bridge": {"peft": "null", "model.tensor_model_parallel_size": 4,
                                         "model.context_parallel_size": 2, "train.micro_batch_size": 1}}),
    Case("nano3-sft-2xh100-falls-back-to-lora", "sft", ["training_jsonl"], H100x2,
         steps=["peft/automodel"], warning="needs >= 8 GPUs"),
    Case("nano3-sft-cpu-blocked", "sft", ["training_jsonl"], CPU, blocked="insufficient_hardware"),
    Case("super3-sft-32xh100-megatron", "sft", ["training_jsonl"], H100x32, {"model": "super3"},
         steps=["data_prep/sft_packing", "sft/megatron_bridge"],
         config={"sft/megatron_bridge": {"model.tensor_model_parallel_size": 8,
                                         "model.pipeline_model_parallel_size": 4}}),
    Case("super3-sft-8xh100-falls-back", "sft", ["training_jsonl"], H100x8, {"model": "super3"},
         steps=["peft/automodel"], warning="needs >= 32 GPUs"),
    Case("super3-a100-40gb-not-recommended", "sft", ["training_jsonl"], Hardware(4, 8, "a100-40gb"),
         {"model": "super3"}, blocked="not recommended"),
    Case("hf-model-sft-automodel-no-packing", "sft", ["training_jsonl"], H100x4, {"model": LLAMA},
         steps=["sft/automodel"], warning="LoRA is recommended",
         config={"sft/automodel": {"model.pretrained_model_name_or_path": LLAMA}}),
    Case("hf-model-lora-small-gpu", "sft", ["training_jsonl"], H100x2, {"model": LLAMA, "peft": "lora"},
         steps=["peft/automodel"]),
    Case("hf-model-explicit-megatron-has-no-recipe", "sft/megatron_bridge", ["training_jsonl"], H100x8,
         {"model": LLAMA}, blocked="no Megatron-Bridge recipe"),
    Case("packed-parquet-never-to-automodel", "sft", ["packed_parquet"], H100x4, {"model": LLAMA},
         blocked="packed_parquet_used_with_automodel"),
    # LoRA backend choice
    Case("peft-hf-base-few-gpus-automodel", "peft", ["training_jsonl"], H100x8, steps=["peft/automodel"]),
    Case("peft-megatron-base-megatron-bridge", "peft", ["training_jsonl", "checkpoint_megatron"], H100x8,
         steps=["data_prep/sft_packing", "peft/megatron_bridge"]),
    Case("peft-multinode-packed-converts-hf-base", "peft", ["packed_parquet"], H100x16,
         steps=["convert/hf_to_megatron", "peft/megatron_bridge"], warning="provide base_model"),
    # Pretraining: pretrain_prep before either backend; CPT loads weights at a lower LR; curation only when asked
    Case("pretrain-hf-automodel", "pretrain", ["filtered_jsonl"], H100x8, {"model": LLAMA},
         steps=["data_prep/pretrain_prep", "pretrain/automodel"],
         config={"pretrain/automodel": {"load_weights": False}}),
    Case("cpt-nano3-megatron-with-curation", "cpt", ["raw_jsonl"], H100x16, {"curate": True},
         steps=["curate/nemo_curator", "data_prep/pretrain_prep", "pretrain/megatron_bridge"],
         config={"pretrain/megatron_bridge": {"load_hf_weights": True, "optimizer.lr": 3e-5}}),
    Case("cpt-user-corpus-is-ready", "cpt", ["training_jsonl"], H100x16,
         steps=["data_prep/pretrain_prep", "pretrain/megatron_bridge"], warning="as a ready corpus"),
    # RL: warm start from an SFT checkpoint, rl_prep only when needed
    Case("dpo-warm-starts-from-sft", "rl", ["training_jsonl"], H200x16, {"rl": "dpo"},
         steps=["data_prep/sft_packing", "sft/megatron_bridge", "rl/nemo_rl/dpo"], warning="provide sft_data"),
    Case("dpo-with-sft-checkpoint-at-hand", "rl", ["training_jsonl", "checkpoint_megatron"], H100x8, {"rl": "dpo"},
         steps=["rl/nemo_rl/dpo"]),
    Case("dpo-without-data-generates-and-preps-pairs", "rl", ["checkpoint_megatron"], H100x8, {"rl": "dpo"},
         steps=["sdg/data_designer", "data_prep/rl_prep", "rl/nemo_rl/dpo"]),
    Case("rlvr-data-needing-prep", "rl", ["training_jsonl", "checkpoint_megatron"], H100x8,
         {"rl": "rlvr", "rl_prep": True}, steps=["data_prep/rl_prep", "rl/nemo_rl/rlvr"]),
    Case("rlhf-needs-a-reward-model", "rl", ["training_jsonl", "checkpoint_megatron"], H100x8, {"rl": "rlhf"},
         steps=["rl/nemo_rl/rlhf"], warning="provide reward_model"),
    Case("rl-on-cpu-blocked", "rl", ["training_jsonl"], CPU, {"rl": "dpo"}, blocked="insufficient_hardware"),
    Case("rl-small-gpus-lora-merged-and-converted", "rl", ["training_jsonl"], H100x2, {"rl": "dpo"},
         steps=["peft/automodel", "convert/merge_lora", "convert/hf_to_megatron", "rl/nemo_rl/dpo"]),
    # Translation, curation, and the MCQ / benchmark hard guard
    Case("translate-user-corpus-directly", "translate", ["training_jsonl"], CPU,
         {"translate": ("en", "th"), "faith": True, "translate_backend": "nmt"}, steps=["translate/nemo_curator"],
         config={"translate/nemo_curator": {"source_language": "en", "target_language": "th",
                                            "faith_eval.enabled": True, "backend": "nmt"}}),
    Case("translate-with-cleaning", "translate", ["training_jsonl"], CPU, {"translate": ("en", "th"), "curate": True},
         steps=["curate/nemo_curator", "translate/nemo_curator"]),
    Case("translate-needs-languages", "translate", ["training_jsonl"], CPU, blocked="--translate SRC:TGT"),
    Case("mcq-translation-goes-to-byob", "translate", ["training_jsonl"], CPU,
         {"translate": ("en", "hi"), "data_kind": "mcq"}, steps=["byob/mcq"],
         config={"byob/mcq": {"stage": "translate"}}),
    Case("benchmark-at-hand-goes-to-byob", "translate", ["mcq_benchmark_parquet"], CPU, {"translate": ("en", "hi")},
         steps=["byob/mcq"]),
    Case("benchmark-creation-and-translation", "benchmark", ["benchmark_source_corpus"], CPU,
         {"translate": ("en", "hi")}, steps=["byob/mcq", "byob/mcq"]),
    Case("curate-goal", "curate", ["training_jsonl"], CPU, steps=["curate/nemo_curator"]),
    Case("sdg-dpo-preferences", "sdg", [], CPU, {"rl": "dpo"}, steps=["sdg/data_designer"]),
    # Quantization by GPU generation; converters only where types disagree
    Case("quantize-fp8-on-hopper", "quantize", ["checkpoint_hf"], H100x8, steps=["optimize/modelopt/quantize"],
         config={"optimize/modelopt/quantize": {"args.export_quant_cfg": "fp8"}}),
    Case("quantize-nvfp4-on-blackwell", "quantize", ["checkpoint_hf"], B200x8, steps=["optimize/modelopt/quantize"],
         config={"optimize/modelopt/quantize": {"args.export_quant_cfg": "nvfp4"}}),
    Case("quantize-int8-on-ampere", "quantize", ["checkpoint_hf"], A100_80x8, steps=["optimize/modelopt/quantize"],
         warning="INT8 SmoothQuant"),
    Case("quantize-megatron-converts-first", "quantize", ["checkpoint_megatron"], H100x8,
         steps=["convert/megatron_to_hf", "optimize/modelopt/quantize"]),
    Case("convert-lora-merges-into-base", "convert", ["checkpoint_lora"], CPU, steps=["convert/merge_lora"],
         warning="provide base_model"),
    Case("convert-megatron-to-hf", "convert", ["checkpoint_megatron"], CPU, steps=["convert/megatron_to_hf"]),
    Case("convert-without-checkpoint", "convert", [], CPU, blocked="convert needs a checkpoint"),
    # Goals as step ids and artifact types
    Case("explicit-megatron-step-no-fallback", "sft/megatron_bridge", ["training_jsonl"], H100x4,
         blocked="needs >= 8 GPUs"),
    Case("artifact-goal-packed-parquet", "packed_parquet", ["training_jsonl"], CPU, steps=["data_prep/sft_packing"]),
    Case("artifact-goal-already-at-hand", "packed_parquet", ["packed_parquet"], CPU, steps=[], warning="already"),
    Case("plain-data-is-not-sft", "sft", ["training_jsonl"], H100x8, {"data_kind": "plain"}, blocked="cpt"),
    Case("unknown-goal", "make_it_better", [], CPU, blocked="unknown_goal: unknown goal"),
]  # fmt: skip


def run(case: Case) -> Plan:
    return plan(case.goal, [Have.parse(h) for h in case.have], case.hardware, Intents(**case.intents))


def main_steps(result: Plan) -> list[str]:
    return [s.step for s in result.stages if s.step != "eval/model_eval"]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_routing(case: Case):
    result = run(case)
    if case.blocked:
        assert result.blocked and case.blocked in result.blocked
        assert result.stages == []
        return
    assert result.blocked is None, result.blocked
    if case.steps is not None:
        assert main_steps(result) == case.steps
    if case.warning:
        assert any(case.warning in w for w in result.warnings), result.warnings
    for step, expected in case.config.items():
        config = next(s.config for s in result.stages if s.step == step)
        assert {k: config.get(k) for k in expected} == expected
    PipelineSpec.parse(result.to_pipeline("routing"))  # every plan is a loadable, well-typed pipeline


def test_at_least_25_routing_cases():
    assert len(CASES) >= 25


def test_packing_size_equals_the_training_sequence_length():
    result = plan("sft", [Have.parse("training_jsonl")], H100x8, Intents(seq_length=8192))
    packing, sft = (
        next(s.config for s in result.stages if s.step == step)
        for step in ("data_prep/sft_packing", "sft/megatron_bridge")
    )
    assert (
        packing["pack_size"] == sft["seq_length"] == sft["dataset.packed_sequence_specs.packed_sequence_size"] == 8192
    )
    assert packing["tokenizer"] == sft["hf_model_path"] == "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16"


def test_global_batch_is_divisible_by_data_parallel():
    result = plan("sft", [Have.parse("training_jsonl")], Hardware(3, 8, "h100"), Intents())
    config = next(s.config for s in result.stages if s.step == "sft/megatron_bridge")
    data_parallel = 24 // (config["model.tensor_model_parallel_size"] * config["model.context_parallel_size"])
    assert config["train.global_batch_size"] % (data_parallel * config["train.micro_batch_size"]) == 0
    assert any("global batch" in w for w in result.warnings)


def test_a100_40gb_recomputes_activations():
    result = plan("sft", [Have.parse("training_jsonl")], A100_40x8, Intents())
    config = next(s.config for s in result.stages if s.step == "sft/megatron_bridge")
    assert (config["model.pipeline_model_parallel_size"], config["model.recompute_granularity"]) == (2, "full")


def bookends(spec: PipelineSpec) -> list[tuple[str, str, str, dict[str, str]]]:
    return [
        (s.name, s.config["role"], s.config["target"], s.consumes) for s in spec.stages if s.step == "eval/model_eval"
    ]


def test_eval_bookends_come_from_the_evaluation_section():
    """The plan's `evaluation:` section, expanded by pipelines/bookends.py: each stage whose checkpoint eval can
    score (HF, LoRA) is scored before and after; Megatron checkpoints (hf_to_megatron, dpo) are not."""
    result = plan("rl", [Have.parse("training_jsonl")], H100x2, Intents(rl="dpo"))
    assert [s.name for s in result.stages] == ["01_peft", "02_merge_lora", "03_hf_to_megatron", "04_dpo"]
    assert result.to_pipeline("p")["evaluation"] == {"preset": "default"}
    spec = result.spec()
    assert [s.name for s in spec.stages] == [
        "eval_base_model", "01_peft", "eval_01_peft", "02_merge_lora", "eval_02_merge_lora",
        "03_hf_to_megatron", "04_dpo",
    ]  # fmt: skip
    assert bookends(spec) == [
        ("eval_base_model", "before", "01_peft", {"checkpoint_hf": "base_model"}),
        ("eval_01_peft", "after", "01_peft", {"checkpoint_lora": "01_peft"}),  # also merge_lora's before
        ("eval_02_merge_lora", "after", "02_merge_lora", {"checkpoint_hf": "02_merge_lora"}),
    ]
    assert [(t.name, b.name, a.name) for t, b, a in spec.bookends()] == [
        ("01_peft", "eval_base_model", "eval_01_peft"),
        ("02_merge_lora", "eval_01_peft", "eval_02_merge_lora"),
    ]
    # the LoRA trains from the base it is merged into: one checkpoint_hf source, which its before-eval scores
    base = next(s for s in result.sources if s.name == "base_model")
    assert (base.type, base.path) == ("checkpoint_hf", "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16")
    assert result.stages[0].config["model.pretrained_model_name_or_path"] == base.path
    assert [s["name"] for s in result.to_json()["stages"]] == [s.name for s in spec.stages]
    assert "base_model -->|checkpoint_hf| eval_base_model" in result.to_mermaid()


def test_a_stage_starts_from_the_users_hf_base():
    result = plan("peft", [Have.parse("training_jsonl"), Have.parse("checkpoint_hf:mine=/models/m")], H100x2, Intents())
    lora = next(s for s in result.stages if s.step == "peft/automodel")
    assert lora.config["model.pretrained_model_name_or_path"] == "/models/m"
    assert bookends(result.spec())[0] == ("eval_mine", "before", lora.name, {"checkpoint_hf": "mine"})


def test_plans_without_scorable_quality_stages_have_no_evaluation_section():
    result = plan("sft", [Have.parse("training_jsonl")], H100x8, Intents())  # Megatron-Bridge: checkpoint_megatron
    assert result.evaluation is None and "evaluation" not in result.to_pipeline("p")
    assert all(s.step != "eval/model_eval" for s in result.spec().stages)


def test_data_steps_get_no_bookends_and_cpu_plans_use_tiny_presets():
    result = plan("packed_parquet", [Have.parse("training_jsonl")], CPU, Intents(model="some/tiny-model"))
    assert [(s.step, s.preset) for s in result.stages] == [("data_prep/sft_packing", "tiny")]
    gpu = plan("packed_parquet", [Have.parse("training_jsonl")], H100x8, Intents())
    assert gpu.stages[0].preset == "default" and gpu.stages[0].config["pack_size"] == 4096


def test_outputs_json_mermaid_and_a_loadable_pipeline():
    result = plan("sft", [Have.parse("training_jsonl:chats=/data/chats.jsonl")], H100x8, Intents())
    document = result.to_json()
    assert document["blocked"] is None and document["goal"] == "sft"
    stage = document["stages"][0]
    assert stage == {
        "name": "01_sft_packing",
        "step": "data_prep/sft_packing",
        "consumes": [{"type": "training_jsonl", "artifact": "chats"}],
        "produces": [{"type": "packed_parquet", "artifact": "01_sft_packing"}],
        "preset": "default",
        "config": stage["config"],
    }
    assert document["sources"] == [
        {"name": "chats", "type": "training_jsonl", "path": "/data/chats.jsonl", "description": "given"}
    ]
    mermaid = result.to_mermaid()
    assert mermaid.startswith("graph LR") and "chats -->|training_jsonl| 01_sft_packing" in mermaid
    spec = PipelineSpec.parse(result.to_pipeline("planned_sft"))
    keys = {k.to_user_string() for k in build_definitions([spec]).resolve_all_asset_keys()}
    assert keys == {
        "planned_sft/chats",
        "planned_sft/01_sft_packing",
        "planned_sft/02_sft",
    }  # no evaluations: eval/model_eval cannot score the Megatron checkpoint sft/megatron_bridge produces


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "nemotron_assets.cli", "plan", *args]
    return subprocess.run(command, capture_output=True, text=True, env=os.environ | env)


def test_cli_surface():
    hardware = ["--nodes", "1", "--gpus-per-node", "8", "--gpu", "h100", "--executor", "slurm"]
    intents = ["--model", "nano3", "--peft", "none", "--data-kind", "chat"]
    result = cli("--goal", "sft", "--have", "training_jsonl", *hardware, *intents)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert [s["step"] for s in document["stages"]] == ["data_prep/sft_packing", "sft/megatron_bridge"]
    assert document["hardware"] == {"nodes": 1, "gpus_per_node": 8, "gpu": "h100", "executor": "slurm", "gpus": 8}
    blocked = cli("--goal", "rl", "--rl", "dpo", "--gpu", "cpu")
    assert blocked.returncode == 0 and json.loads(blocked.stdout)["stages"] == []
    assert json.loads(blocked.stdout)["blocked"].startswith("insufficient_hardware")
    assert cli("--goal", "sft", "--format", "mermaid", "--gpus-per-node", "8").stdout.startswith("graph LR")
    assert cli("--goal", "sft", "--have", "nonsense").returncode == 2
    explained = json.loads(cli("--goal", "sft", "--have", "training_jsonl", *hardware, "--explain").stdout)["explain"]
    assert [r["rule"] for r in explained["rules"]] == ["sft-megatron-recipe", "layout-nano3+lightning35-h100"]
    assert explained["memory"]["full_sft_fits"] == "yes" and explained["memory"]["parameters_b"] == 30
    commented = cli("--goal", "sft", "--have", "training_jsonl", *hardware, "--format", "yaml", "--explain").stdout
    assert commented.startswith("# rule sft-megatron-recipe: Use Megatron-Bridge") and "# memory: {" in commented


def test_plan_yaml_to_definitions_to_materialize(fixtures_dir: Path, tmp_path: Path, artifact_root: Path):
    """plan a CPU-feasible goal -> YAML -> Definitions -> `dagster asset materialize` succeeds."""
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    have = f"training_jsonl:chats={DATA / 'tiny_chat.jsonl'}"
    model = str(fixtures_dir / "tiny-llama")
    planned = cli(
        "--goal",
        "packed_parquet",
        "--have",
        have,
        "--model",
        model,
        "--gpu",
        "cpu",
        "--format",
        "yaml",
        "--name",
        "planned",
    )
    assert planned.returncode == 0, planned.stderr
    (pipelines / "planned.yaml").write_text(planned.stdout)
    assert yaml.safe_load(planned.stdout)["stages"][0]["config"]["tokenizer"] == str(fixtures_dir / "tiny-llama")

    env = os.environ | {"NEMOTRON_PIPELINE_DIRS": str(pipelines)}
    command = [
        str(Path(sys.executable).parent / "dagster"),
        "asset",
        "materialize",
        "-m",
        "nemotron_assets.definitions",
    ]
    result = subprocess.run([*command, "--select", "group:planned"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    published = list((artifact_root / "planned" / "01_sft_packing").glob("*/provenance.json"))
    assert len(published) == 1 and json.loads(published[0].read_text())["stats"]["sequences"] == 48


def test_every_plan_is_a_well_typed_loadable_pipeline():
    """Goal x hardware x artifacts at hand x model: every plan that is not blocked loads in the factory."""
    from itertools import product

    from nemotron_assets.catalog import CATALOG
    from nemotron_assets.planning import TASKS

    hardware = [CPU, H100x2, H100x8, H200x16, H100x32, B200x8, A100_40x8]
    haves = [[], ["training_jsonl"], ["checkpoint_megatron", "training_jsonl"], ["checkpoint_lora"], ["raw_jsonl"]]
    goals = [*TASKS, *CATALOG.steps, *CATALOG.types]
    served = []
    for goal, hw, have, model in product(goals, hardware, haves, ["nano3", "super3", LLAMA]):
        result = plan(goal, [Have.parse(h) for h in have], hw, Intents(model=model))
        if result.blocked is None:
            served.append(PipelineSpec.parse(result.to_pipeline(f"p{len(served)}")))
    assert len(served) > 4500
    build_definitions(served[::40])  # and the factory builds them (Dagster config classes included)
