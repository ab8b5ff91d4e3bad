"""The selection rules of catalog/rules.toml: a table of cases per rule family, each naming the rule it exercises
(every rule has one), and a property over goal x hardware x intents: every plan honours every intent it was given
and loads as a pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product

import pytest
from test_planning import CPU, LLAMA, A100_40x8, B200x8, H100x2, H100x8, H100x16, H200x16
from test_planning import A100_80x8 as A100x8

from nemotron_assets.catalog import CATALOG
from nemotron_assets.pipelines import PipelineSpec
from nemotron_assets.planning import DECLARED, TASKS, Hardware, Have, Intents, Plan, plan

H100x1 = Hardware(1, 1, "h100")
TINY = "fixtures/tiny-llama"  # no size in its name: memory unknown


@dataclass
class Case:
    rule: str  # the rules.toml id this case exercises
    goal: str
    have: list[str] = field(default_factory=list)
    hardware: Hardware = H100x8
    intents: dict = field(default_factory=dict)
    steps: list[str] | None = None  # the plan's steps, without eval bookends
    blocked: str | None = None  # the named error the plan is blocked with
    config: dict = field(default_factory=dict)  # {step: {param: value}} the stage must get


def run(case: Case) -> Plan:
    return plan(case.goal, [Have.parse(h) for h in case.have], case.hardware, Intents(**case.intents))


def check(case: Case) -> None:
    result = run(case)
    assert case.rule in [rule.id for rule in result.fired], [rule.id for rule in result.fired]
    if case.blocked:
        assert result.blocked and result.blocked.startswith(f"{case.blocked}:"), result.blocked
        return
    assert result.blocked is None, result.blocked
    assert [s.step for s in result.stages if s.step != "eval/model_eval"] == case.steps
    for step, expected in case.config.items():
        config = next(s.params() for s in result.stages if s.step == step)
        assert {k: config.get(k) for k in expected} == expected
    PipelineSpec.parse(result.to_pipeline("rules"))


BACKEND = [
    Case("sft-needs-chat-data", "sft", ["training_jsonl"], intents={"data_kind": "plain"}, blocked="missing_messages"),
    Case("sft-lora-asked", "sft", ["training_jsonl"], intents={"peft": "lora"}, steps=["peft/automodel"]),
    Case("sft-megatron-recipe", "sft", ["training_jsonl"], steps=["data_prep/sft_packing", "sft/megatron_bridge"]),
    Case("sft-recipe-needs-gpus", "sft", ["training_jsonl"], CPU, blocked="insufficient_hardware"),
    Case("sft-recipe-needs-gpus", "pretrain", ["filtered_jsonl"], CPU, blocked="insufficient_hardware"),
    Case("sft-full-asked-too-few-gpus", "sft", ["training_jsonl"], H100x2, {"peft": "none"},
         blocked="insufficient_hardware"),
    Case("sft-recipe-too-few-gpus-lora", "sft", ["training_jsonl"], H100x2, steps=["peft/automodel"]),
    Case("sft-automodel-on-cpu", "sft", ["training_jsonl"], CPU, {"model": TINY}, steps=["sft/automodel"]),
    Case("sft-automodel-few-gpus", "sft", ["training_jsonl"], H100x2, {"model": LLAMA}, steps=["sft/automodel"]),
    Case("sft-automodel-hf-model", "sft", ["training_jsonl"], H100x8, {"model": LLAMA}, steps=["sft/automodel"]),
    Case("peft-none-contradicts-peft", "peft", ["training_jsonl"], intents={"peft": "none"},
         blocked="intent_not_applicable"),
    Case("peft-megatron-signal", "peft", ["training_jsonl", "checkpoint_megatron"],
         steps=["data_prep/sft_packing", "peft/megatron_bridge"]),
    Case("peft-megatron-signal", "peft", ["packed_parquet"], H100x16,
         steps=["convert/hf_to_megatron", "peft/megatron_bridge"]),
    Case("peft-megatron-signal-too-few-gpus", "peft", ["training_jsonl", "checkpoint_megatron"], H100x2,
         steps=["peft/automodel"]),
    Case("peft-hf-base", "peft", ["training_jsonl"], H100x2, steps=["peft/automodel"]),
    Case("pretrain-megatron-recipe", "cpt", ["filtered_jsonl"], steps=["data_prep/pretrain_prep",
                                                                       "pretrain/megatron_bridge"]),
    Case("pretrain-recipe-too-few-gpus", "pretrain", ["filtered_jsonl"], H100x2,
         steps=["data_prep/pretrain_prep", "pretrain/automodel"]),
    Case("pretrain-automodel", "pretrain", ["filtered_jsonl"], intents={"model": LLAMA},
         steps=["data_prep/pretrain_prep", "pretrain/automodel"]),
]  # fmt: skip

MEMORY = [  # full SFT holds 16 bytes a parameter sharded over the GPUs, against 80% of each GPU's memory
    Case("sft-does-not-fit-lora", "sft", ["training_jsonl"], H100x1, {"model": LLAMA}, steps=["peft/automodel"]),
    Case("sft-full-asked-does-not-fit", "sft", ["training_jsonl"], H100x1, {"model": LLAMA, "peft": "none"},
         blocked="insufficient_hardware"),
    Case("sft-automodel-hf-model", "sft", ["training_jsonl"], H100x2, {"model": LLAMA, "peft": "none"},
         steps=["sft/automodel"]),  # 8B over 2 GPUs: 59.6 GiB each, under 64 of 80
    Case("sft-automodel-few-gpus", "sft", ["training_jsonl"], H100x1, {"model": TINY}, steps=["sft/automodel"]),
]  # fmt: skip

GUARD = [
    Case("mcq-hard-guard", "translate", ["training_jsonl"], CPU, {"translate": ("en", "hi"), "data_kind": "mcq"},
         steps=["byob/mcq"]),
    Case("mcq-hard-guard", "translate/nemo_curator", ["mcq_benchmark_parquet"], CPU, {"translate": ("en", "hi")},
         steps=["byob/mcq"]),
    Case("mcq-hard-guard", "sft", ["training_jsonl"], H100x8, {"translate": ("en", "hi"), "data_kind": "mcq"},
         blocked="intent_not_applicable"),
    Case("translate-corpus", "translate", ["training_jsonl"], CPU, {"translate": ("en", "hi")},
         steps=["translate/nemo_curator"]),
]  # fmt: skip

QUANTIZE = [
    Case(
        rule,
        "quantize",
        ["checkpoint_hf"],
        hardware,
        steps=["optimize/modelopt/quantize"],
        config={"optimize/modelopt/quantize": {"args.export_quant_cfg": quant} | params},
    )
    for rule, hardware, quant, params in (
        ("quantize-cpu-fake-quant", CPU, "fp8", {}),
        ("quantize-native-format", B200x8, "nvfp4", {"hf_export": True}),
        ("quantize-native-format", H100x8, "fp8", {"hf_export": True}),
        ("quantize-int8-fallback", A100x8, "int8_sq", {"hf_export": False}),  # SmoothQuant: no HF export
    )
]

INTENTS = [  # every intent is honoured on every goal: data intents on training goals too
    Case("curate-intent", "sft", ["training_jsonl"], H100x8, {"curate": True},
         steps=["curate/nemo_curator", "data_prep/sft_packing", "sft/megatron_bridge"]),
    Case("curate-intent", "quantize", ["checkpoint_hf", "raw_jsonl"], H100x8, {"curate": True},
         steps=["curate/nemo_curator", "optimize/modelopt/quantize"]),  # the calibration rows are curated
    Case("translate-intent", "sft", ["training_jsonl"], H100x8, {"translate": ("en", "th"), "curate": True},
         steps=["curate/nemo_curator", "translate/nemo_curator", "data_prep/sft_packing", "sft/megatron_bridge"]),
    Case("translate-intent", "cpt", ["raw_jsonl"], H100x8, {"translate": ("en", "th")},
         steps=["translate/nemo_curator", "data_prep/pretrain_prep", "pretrain/megatron_bridge"]),
    Case("translate-intent", "benchmark", ["benchmark_source_corpus"], CPU, {"translate": ("en", "th")},
         steps=["byob/mcq", "byob/mcq"]),
    Case("rl-prep-intent", "rl", ["training_jsonl", "checkpoint_megatron"], H100x8, {"rl": "rlhf", "rl_prep": True},
         steps=["data_prep/rl_prep", "rl/nemo_rl/rlhf"]),
    Case("rl-prep-intent", "sft", ["training_jsonl"], H100x8, {"rl_prep": True}, blocked="intent_not_applicable"),
    Case("lora-intent", "rl", ["training_jsonl"], H100x8, {"peft": "lora", "rl": "dpo"},
         steps=["peft/automodel", "convert/merge_lora", "convert/hf_to_megatron", "rl/nemo_rl/dpo"]),
    Case("lora-intent", "eval", [], CPU, {"peft": "lora"}, blocked="intent_not_applicable"),
    Case("peft-none-contradicts-peft", "peft/automodel", ["training_jsonl"], H100x8, {"peft": "none"},
         blocked="intent_not_applicable"),  # a step goal too
    Case("peft-none-contradicts-peft", "peft/megatron_bridge", ["training_jsonl"], H100x8, {"peft": "none"},
         blocked="intent_not_applicable"),
    Case("dpo-intent", "sdg", [], CPU, {"rl": "dpo"}, steps=["sdg/data_designer"]),
    Case("rlvr-intent", "rl", ["training_jsonl", "checkpoint_megatron"], H100x8, {"rl": "rlvr"},
         steps=["rl/nemo_rl/rlvr"]),
    Case("rlvr-intent", "sdg", [], CPU, {"rl": "rlvr"}, blocked="intent_not_applicable"),
    Case("rlhf-intent", "rl", ["training_jsonl", "checkpoint_megatron", "checkpoint_hf:judge"], H100x8, {"rl": "rlhf"},
         steps=["rl/nemo_rl/rlhf"]),
]  # fmt: skip

CONVERT = [  # conversion only at format boundaries; an adapter and its base with a checkpoint goal are merged
    Case("merge-adapter", "checkpoint_hf", ["checkpoint_lora", "checkpoint_hf"], CPU, steps=["convert/merge_lora"]),
    Case("merge-adapter", "checkpoint_megatron", ["checkpoint_lora", "checkpoint_hf"], CPU,
         steps=["convert/merge_lora", "convert/hf_to_megatron"]),
    Case("merge-adapter", "convert", ["checkpoint_lora"], CPU, steps=["convert/merge_lora"]),
    Case("merge-adapter", "quantize", ["checkpoint_lora", "checkpoint_hf", "training_jsonl"], H100x8,
         steps=["convert/merge_lora", "optimize/modelopt/quantize"]),  # the adapted model, not its bare base
    Case("merge-adapter", "distill", ["checkpoint_lora", "checkpoint_hf", "training_jsonl"], CPU,
         steps=["convert/merge_lora", "optimize/modelopt/distill"]),
    Case("megatron-to-hf", "convert", ["checkpoint_megatron"], CPU, steps=["convert/megatron_to_hf"]),
    Case("hf-to-megatron", "convert", ["checkpoint_hf"], CPU, steps=["convert/hf_to_megatron"]),
]  # fmt: skip

NANO3_H200 = {"model.tensor_model_parallel_size": 4, "model.context_parallel_size": 2, "train.micro_batch_size": 1}
LAYOUT = [  # the hardware table: a layout per family and GPU (micro batch 1 on packed data)
    Case("layout-nano3+lightning35-h200", "sft", ["training_jsonl"], H200x16,
         steps=["data_prep/sft_packing", "sft/megatron_bridge"], config={"sft/megatron_bridge": NANO3_H200}),
    Case("layout-nano3+lightning35-h100", "sft", ["training_jsonl"], H100x8, {"model": "lightning35"},
         steps=["data_prep/sft_packing", "sft/megatron_bridge"],
         config={"sft/megatron_bridge": {"hf_model_path": "nvidia/NVIDIA-Nemotron-3.5-Lightning-30B-A3B-BF16"}}),
    Case("layout-nano3+lightning35-a100-40gb", "pretrain", ["filtered_jsonl"], A100_40x8,
         steps=["data_prep/pretrain_prep", "pretrain/megatron_bridge"],
         config={"pretrain/megatron_bridge": {"model.pipeline_model_parallel_size": 2,
                                              "model.recompute_granularity": "full"}}),
    Case("layout-super3-h200", "sft", ["training_jsonl"], Hardware(4, 8, "h200"), {"model": "super3"},
         steps=["data_prep/sft_packing", "sft/megatron_bridge"],
         config={"sft/megatron_bridge": {"model.tensor_model_parallel_size": 8,
                                         "model.pipeline_model_parallel_size": 2}}),
    Case("layout-super3-h100", "sft", ["training_jsonl"], Hardware(4, 8, "h100"), {"model": "super3"},
         steps=["data_prep/sft_packing", "sft/megatron_bridge"],
         config={"sft/megatron_bridge": {"model.pipeline_model_parallel_size": 4}}),
    Case("layout-super3-a100-80gb", "sft", ["training_jsonl"], Hardware(4, 8, "a100-80gb"), {"model": "super3"},
         steps=["data_prep/sft_packing", "sft/megatron_bridge"]),
    Case("layout-nano3+lightning35-a100-80gb", "sft", ["training_jsonl"], A100x8,
         steps=["data_prep/sft_packing", "sft/megatron_bridge"],
         config={"sft/megatron_bridge": {"model.context_parallel_size": 2}}),
]  # fmt: skip

FAMILIES = {"backend": BACKEND, "memory": MEMORY, "guard": GUARD, "quantize": QUANTIZE, "intents": INTENTS,
            "convert": CONVERT, "layout": LAYOUT}  # fmt: skip
ALL = [case for cases in FAMILIES.values() for case in cases]


TABLE = [pytest.param(c, id=f"{family}-{c.rule}-{c.goal}") for family, cases in FAMILIES.items() for c in cases]


@pytest.mark.parametrize("case", TABLE)
def test_rule(case: Case):
    check(case)


@pytest.mark.parametrize("goal", ["quantize", "prune", "distill", "optimize/modelopt/prune"])
def test_modelopt_stages_get_the_rows_they_calibrate_or_train_on(goal: str):
    result = plan(goal, [Have.parse("checkpoint_hf"), Have.parse("training_jsonl")], H100x8, Intents())
    assert result.blocked is None, result.blocked
    stage = next(s for s in result.stages if s.step.startswith("optimize/modelopt/"))
    assert stage.consumes == {"checkpoint_hf": "checkpoint_hf", "training_jsonl": "training_jsonl"}
    PipelineSpec.parse(result.to_pipeline("modelopt"))


def test_every_rule_has_a_case():
    rules = {r.id for r in (*CATALOG.rules.route, *CATALOG.rules.intent, *CATALOG.rules.convert)}
    rules |= {row.id for row in CATALOG.rules.parallelism}
    assert rules - {case.rule for case in ALL} == set()


def test_a_model_without_a_recipe_and_a_gpu_without_a_row():
    blocked = plan("sft/megatron_bridge", [Have.parse("training_jsonl")], H100x8, Intents(model=LLAMA)).blocked
    assert blocked.startswith("no_recipe_for_model: no Megatron-Bridge recipe for " + LLAMA)
    blocked = plan("sft", [Have.parse("training_jsonl")], Hardware(4, 8, "a100-40gb"), Intents(model="super3")).blocked
    assert blocked.startswith("insufficient_hardware: super3 on a100-40gb is not recommended")


def test_the_memory_estimate_shards_weights_gradients_and_optimizer_state():
    result = plan("sft", [Have.parse("training_jsonl")], H100x2, Intents(model=LLAMA))
    memory = result.explain()["memory"]
    assert memory["full_sft_gib_per_gpu"] == round(8e9 * 16 / 2 / 2**30, 1)  # 2 + 2 + 12 bytes, over 2 GPUs
    assert memory["lora_gib_per_gpu"] == round(8e9 * 2 / 2 / 2**30, 1)
    assert (memory["gpu_gib"], memory["full_sft_fits"]) == (80, "yes")
    assert plan("sft", [], Hardware(1, 8, "a100-40gb"), Intents(model=LLAMA)).memory.gpu_gib == 40


def test_bookends_follow_the_catalog_categories():
    spec = plan("sft", [Have.parse("training_jsonl")], H100x2, Intents(curate=True)).spec()
    evaluated = {s.config["target"] for s in spec.stages if s.step == "eval/model_eval"}
    steps = {s.name: s.step for s in spec.stages}
    assert {steps[name] for name in evaluated} == {"peft/automodel"}  # curation is a data step
    assert "sft" in CATALOG.rules.bookends.categories


# ---- the property: goal x hardware x intents --------------------------------------------------------------------

SWEEP_INTENTS = {
    "none": {},
    "curate": {"curate": True},
    "translate": {"translate": ("en", "de"), "faith": True},
    "curate+translate": {"curate": True, "translate": ("en", "de")},
    "lora": {"peft": "lora"},
    "full": {"peft": "none"},
    "dpo": {"rl": "dpo"},
    "rlvr+prep": {"rl": "rlvr", "rl_prep": True},
    "rlhf": {"rl": "rlhf"},
}
SWEEP_HARDWARE = [CPU, H100x2, H100x8, H100x16, A100_40x8, H200x16, B200x8]
SWEEP_HAVE = [["training_jsonl"], ["checkpoint_megatron", "training_jsonl"], ["checkpoint_lora", "checkpoint_hf"]]


def honours(result: Plan, intents: dict) -> bool:
    """The plan has a stage doing what each intent asks (checked here from the stages, not from the rules)."""
    stages = result.stages
    steps = [s.step for s in stages]
    checks = {
        "curate": lambda v: "curate/nemo_curator" in steps,
        "translate": lambda v: any(
            s.step in ("translate/nemo_curator", "byob/mcq") and s.config.get("target_language") == v[1] for s in stages
        ),
        "faith": lambda v: all(
            s.config.get("faith_eval.enabled") is True for s in stages if s.step == "translate/nemo_curator"
        ),
        "peft": lambda v: any(s.startswith("peft/") for s in steps) == (v == "lora"),
        "rl": lambda v: (
            f"rl/nemo_rl/{v}" in steps
            or (v == "dpo" and any(s.step == "sdg/data_designer" and s.preset == "rl_pref" for s in stages))
        ),
        "rl_prep": lambda v: "data_prep/rl_prep" in steps,
    }
    return all(checks[name](value) for name, value in intents.items())


def test_every_plan_honours_every_intent_and_loads():
    goals = [*TASKS, *CATALOG.steps, *CATALOG.types]
    served = dict.fromkeys(SWEEP_INTENTS, 0)
    for goal, hardware, have, (label, intents) in product(goals, SWEEP_HARDWARE, SWEEP_HAVE, SWEEP_INTENTS.items()):
        result = plan(goal, [Have.parse(h) for h in have], hardware, Intents(**intents))
        if result.blocked is not None:
            assert result.stages == [] and result.blocked.split(":")[0] in DECLARED, result.blocked
            continue
        assert honours(result, intents), (goal, hardware, have, label, [s.step for s in result.stages])
        PipelineSpec.parse(result.to_pipeline(f"sweep_{served[label]}"))
        served[label] += 1
    assert min(served.values()) >= 5, str(served)  # every intent is served on several goals
