"""Pipeline specs type-check every edge at load."""

from __future__ import annotations

import pytest

from nemotron_assets.errors import NamedError
from nemotron_assets.pipelines import PipelineError, PipelineSpec, load_pipelines

PACKING = {"name": "a", "step": "data_prep/sft_packing", "consumes": {"training_jsonl": "chat"}}


def spec(stages, sources=None) -> dict:
    sources = sources or [{"name": "chat", "type": "training_jsonl", "path": "/x.jsonl"}]
    return {"name": "p", "description": "d", "sources": sources, "stages": stages}


def test_shipped_pipelines_load():
    tiny = next(p for p in load_pipelines() if p.name == "tiny")
    assert [s.name for s in tiny.stages][:5] == ["chat_split", "packed_parquet", "binidx", "dpo_data", "rlvr_data"]
    assert tiny.stage("lora").consumes == {"training_jsonl": "chat_split"}  # trained on the train split
    assert tiny.stage("eval_lora").consumes["training_jsonl"] == "chat_split"  # scored on the held-out split
    assert gates(tiny) == {  # inserted by its evaluation section
        "lora": ("eval_base", "eval_lora"),
        "merged": ("eval_lora", "eval_merged"),
        "cpt": ("eval_base", "eval_cpt"),
    }
    assert tiny.params(tiny.stage("eval_cpt"))["gate_tolerance"] == 0.05
    assert tiny.params(tiny.stage("packed_parquet"))["pack_size"] == 256  # tiny preset
    assert tiny.params(tiny.stage("packed_parquet"))["algorithm"] == "first_fit_decreasing"  # pipeline config


def test_minitron_scores_the_distilled_megatron_checkpoint_through_its_export():
    minitron = next(p for p in load_pipelines() if p.name == "minitron")
    assert gates(minitron) == {
        "pruned": ("eval_base", "eval_pruned"),
        "distilled": ("eval_pruned", "eval_distilled_hf"),
    }
    names = [s.name for s in minitron.stages]
    assert names.index("eval_distilled_hf") > names.index("distilled_hf")  # scored after the export exists
    assert minitron.stage("eval_distilled_hf").consumes["checkpoint_hf"] == "distilled_hf"
    assert not any(
        minitron.params(s).get("target") == "distilled_hf" for s in minitron.stages
    )  # no bookends of its own
    assert minitron.params(minitron.stage("eval_pruned"))["gate_tolerance"] == 1.0


def test_ill_typed_edge_names_both_types_and_the_fix():
    stages = [
        {"name": "packed", "step": "data_prep/sft_packing", "consumes": {"training_jsonl": "chat"}},
        {"name": "again", "step": "data_prep/rl_prep", "consumes": {"training_jsonl": "packed"}},
    ]
    with pytest.raises(
        PipelineError, match="edge packed -> again: packed is packed_parquet, data_prep/rl_prep consumes training_jsonl"
    ):
        PipelineSpec.parse(spec(stages))


def test_edge_error_suggests_the_converter():
    sources = [{"name": "text", "type": "raw_jsonl", "path": "/x.jsonl"}]
    stages = [{"name": "bins", "step": "data_prep/pretrain_prep", "consumes": {"filtered_jsonl": "text"}}]
    with pytest.raises(
        PipelineError,
        match="text is raw_jsonl, data_prep/pretrain_prep consumes filtered_jsonl; insert curate/nemo_curator",
    ):
        PipelineSpec.parse(spec(stages, sources))


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        ({"name": "a", "step": "data_prep/sft_pack", "consumes": {"training_jsonl": "chat"}}, "did you mean"),
        ({"name": "a", "step": "data_prep/sft_packing", "consumes": {"training_jsonl": "nope"}}, "not defined"),
        ({"name": "a", "step": "data_prep/sft_packing", "consumes": {}}, "needs \\['training_jsonl'\\]"),
        ({"name": "a", "step": "data_prep/sft_packing", "consumes": {"binidx": "chat"}}, "consumes no binidx"),
        (PACKING | {"preset": "huge"}, "no preset"),
        (PACKING | {"config": {"pack": 1}}, "no parameter"),
        (PACKING | {"config": {"algorithm": "best"}}, "not in choices"),
        ({"name": "chat", "step": "data_prep/sft_packing", "consumes": {"training_jsonl": "chat"}}, "defined twice"),
        ({"name": "Bad-Name", "step": "data_prep/sft_packing", "consumes": {"training_jsonl": "chat"}}, "must match"),
    ],
)  # fmt: skip
def test_bad_stages(stage: dict, message: str):
    with pytest.raises(PipelineError, match=message):
        PipelineSpec.parse(spec([stage]))


def test_packed_parquet_fed_to_automodel_names_the_catalog_error():
    stages = [
        {"name": "packed", "step": "data_prep/sft_packing", "consumes": {"training_jsonl": "chat"}},
        {"name": "sft", "step": "sft/automodel", "consumes": {"training_jsonl": "packed"}},
    ]
    with pytest.raises(PipelineError) as caught:
        PipelineSpec.parse(spec(stages))
    message = str(caught.value)
    assert "edge packed -> sft: packed is packed_parquet, sft/automodel consumes training_jsonl" in message
    assert "packed_parquet_used_with_automodel: AutoModel reads chat JSONL" in message


@pytest.mark.parametrize("seq_length", [2048, 4096])
def test_bins_packed_to_another_length_than_the_trainer_reads_are_refused_at_load(seq_length: int):
    stages = [
        PACKING | {"config": {"pack_size": 2048}},
        {
            "name": "sft",
            "step": "sft/megatron_bridge",
            "consumes": {"packed_parquet": "a"},
            "config": {"seq_length": seq_length},
        },
    ]
    if seq_length == 2048:
        assert PipelineSpec.parse(spec(stages)).stage("sft")
        return
    with pytest.raises(NamedError, match="seq_length_mismatch: stage a packs to 2048 tokens, stage sft trains at seq"):
        PipelineSpec.parse(spec(stages))


def test_unset_source_variable_is_a_named_error(tmp_path):
    from nemotron_assets.errors import NamedError
    from nemotron_assets.execution import resolve_input
    from resources.artifact_store import ArtifactStore

    pipeline = PipelineSpec.parse(
        spec([], [{"name": "chat", "type": "training_jsonl", "path": "${NEMOTRON_INPUT_CHAT}"}])
    )
    with pytest.raises(NamedError, match=r"artifact_missing: .*NEMOTRON_INPUT_CHAT"):
        resolve_input(pipeline, "chat", ArtifactStore(root=str(tmp_path)))


MODEL_SOURCES = [
    {"name": "chat", "type": "training_jsonl", "path": "/x.jsonl"},
    {"name": "mcq", "type": "mcq_benchmark_parquet", "path": "/mcq.parquet"},
    {"name": "base", "type": "checkpoint_hf", "path": "/models/base"},
]
EVALUATION = {"data": {"mcq_benchmark_parquet": "mcq", "training_jsonl": "chat"}, "preset": "tiny"}
FROM_BASE = {"model.pretrained_model_name_or_path": "/models/base"}
LORA = {"name": "lora", "step": "peft/automodel", "consumes": {"training_jsonl": "chat"}, "config": FROM_BASE}
MERGED = {
    "name": "merged",
    "step": "convert/merge_lora",
    "consumes": {"checkpoint_lora": "lora", "checkpoint_hf": "base"},
}
SFT = {"name": "sft", "step": "sft/automodel", "consumes": {"training_jsonl": "chat"}, "config": FROM_BASE}
BOOKEND = ("role", "target", "gate_tolerance")  # what differs between bookends


def evaluated(stages: list[dict], evaluation: dict | None = None, sources: list[dict] = MODEL_SOURCES) -> PipelineSpec:
    return PipelineSpec.parse(spec(stages, sources) | {"evaluation": EVALUATION | (evaluation or {})})


def evals(pipeline: PipelineSpec) -> dict[str, tuple[str, str | None]]:
    """eval name -> (role, target)"""
    return {
        s.name: (pipeline.params(s)["role"], pipeline.params(s)["target"])
        for s in pipeline.stages
        if s.step == "eval/model_eval"
    }


def gates(pipeline: PipelineSpec) -> dict[str, tuple[str, str]]:
    """gated stage -> (before-eval, after-eval)"""
    return {target.name: (before.name, after.name) for target, before, after in pipeline.bookends()}


def test_evaluation_section_bookends_every_quality_stage():
    pipeline = evaluated([LORA, MERGED, SFT], {"config": {"limit": 8}})
    assert [s.name for s in pipeline.stages] == [
        "eval_base",
        "lora",
        "eval_lora",
        "merged",
        "eval_merged",
        "sft",
        "eval_sft",
    ]
    assert evals(pipeline) == {
        "eval_base": ("before", "lora"),
        "eval_lora": ("after", "lora"),
        "eval_merged": ("after", "merged"),
        "eval_sft": ("after", "sft"),
    }
    scored = {s.name: s.consumes for s in pipeline.stages if s.step == "eval/model_eval"}
    assert scored["eval_base"] == {"checkpoint_hf": "base"} | EVALUATION["data"]
    assert scored["eval_lora"] == {"checkpoint_lora": "lora"} | EVALUATION["data"]
    settings = [
        {k: v for k, v in pipeline.params(s).items() if k not in BOOKEND} | {"preset": s.preset}
        for s in pipeline.stages
        if s.step == "eval/model_eval"
    ]
    assert all(s == settings[0] for s in settings) and settings[0]["limit"] == 8 and settings[0]["preset"] == "tiny"


def test_one_before_eval_serves_every_stage_starting_from_a_model():
    # lora and sft load /models/base by parameter: the source at that path is what they start from.
    assert gates(evaluated([LORA, SFT])) == {"lora": ("eval_base", "eval_lora"), "sft": ("eval_base", "eval_sft")}


def test_an_after_eval_doubles_as_the_next_stages_before():
    assert gates(evaluated([LORA, MERGED])) == {
        "lora": ("eval_base", "eval_lora"),
        "merged": ("eval_lora", "eval_merged"),
    }


def test_gate_tolerance_by_stage_beats_by_category():
    pipeline = evaluated([LORA, MERGED, SFT], {"gate_tolerance": {"peft": 0.05, "sft": 0.02, "merged": 0.0}})
    tolerances = {s.name: pipeline.params(s)["gate_tolerance"] for s in pipeline.stages if s.step == "eval/model_eval"}
    assert tolerances == {"eval_base": None, "eval_lora": 0.05, "eval_merged": 0.0, "eval_sft": 0.02}


def test_evaluate_false_opts_a_stage_out():
    assert gates(evaluated([LORA, SFT | {"evaluate": False}])) == {"lora": ("eval_base", "eval_lora")}
    # Without lora's own bookends, merged still gets a before-eval of the adapter it starts from.
    pipeline = evaluated([LORA | {"evaluate": False}, MERGED])
    assert evals(pipeline) == {"eval_lora": ("before", "merged"), "eval_merged": ("after", "merged")}


def test_hand_written_bookends_suppress_the_automatic_ones():
    data = EVALUATION["data"]
    before = {"role": "before", "target": "lora", "model": "/models/base"}
    stages = [
        {"name": "base_scores", "step": "eval/model_eval", "consumes": data, "preset": "tiny", "config": before},
        LORA,
        {
            "name": "lora_scores",
            "step": "eval/model_eval",
            "consumes": {"checkpoint_lora": "lora"} | data,
            "preset": "tiny",
            "config": {"role": "after", "target": "lora"},
        },
        MERGED,
    ]
    pipeline = evaluated(stages)
    assert set(evals(pipeline)) == {"base_scores", "lora_scores", "eval_merged"}
    assert gates(pipeline) == {"lora": ("base_scores", "lora_scores"), "merged": ("lora_scores", "eval_merged")}


def test_expansion_is_idempotent():
    pipeline = evaluated([LORA, MERGED, SFT])
    assert PipelineSpec.parse(pipeline.model_dump()) == pipeline


def test_megatron_checkpoint_is_gated_through_its_export_and_scratch_has_no_gate():
    # A Megatron checkpoint is scored through its conversion to HF: the import is gated on the round trip's scores
    # (the conversion gets no bookends of its own); pretraining from scratch has no model before it.
    stages = [
        {"name": "mcore", "step": "convert/hf_to_megatron", "consumes": {"checkpoint_hf": "base"}},
        {"name": "back", "step": "convert/megatron_to_hf", "consumes": {"checkpoint_megatron": "mcore"}},
    ]
    scratch = {"name": "bins", "type": "binidx", "path": "/bins"}
    pretrain = {"name": "fresh", "step": "pretrain/automodel", "consumes": {"binidx": "bins"}}
    pipeline = evaluated([*stages, pretrain | {"config": {"load_weights": False}}], sources=[*MODEL_SOURCES, scratch])
    assert evals(pipeline) == {
        "eval_base": ("before", "mcore"),
        "eval_back": ("after", "mcore"),
        "eval_fresh": ("after", "fresh"),
    }
    assert gates(pipeline) == {"mcore": ("eval_base", "eval_back")}
    assert [s.name for s in pipeline.stages].index("eval_back") > [s.name for s in pipeline.stages].index("back")


def test_bookend_names_must_not_collide():
    packing = {"name": "eval_lora", "step": "data_prep/sft_packing", "consumes": {"training_jsonl": "chat"}}
    with pytest.raises(PipelineError, match="the evaluation of lora is named 'eval_lora', like an artifact"):
        evaluated([LORA, packing])
    assert "lora_scores" in evals(evaluated([LORA, packing], {"names": {"lora": "lora_scores"}}))


@pytest.mark.parametrize(
    ("evaluation", "stages", "message"),
    [
        ({"config": {"role": "after"}}, [LORA], r"evaluation.config sets \['role'\]"),
        ({"config": {"gate_tolerance": 0.1}}, [LORA], "per-stage or per-category tolerances go in"),
        ({"data": {"checkpoint_hf": "base"}}, [LORA], "bookends score the stages' checkpoints"),
        ({"data": {"training_jsonl": "held_out"}}, [LORA], r"evaluation.data names \['held_out'\]"),
        ({"names": {"nothing": "eval_x"}}, [LORA], r"evaluation.names names \['nothing'\]"),
        ({"gate_tolerance": {"lorra": 0.1}}, [LORA], r"\['lorra'\] are neither stages nor quality-changing"),
        ({"preset": "huge"}, [LORA], "evaluation.preset 'huge' is not a preset of eval/model_eval"),
        ({"config": {"limit": "all"}}, [LORA], "stage eval_base: parameter 'limit': 'all' is not of type int"),
        ({}, [LORA | {"config": {"model.pretrained_model_name_or_path": "org/m"}}], "declare it as a checkpoint_hf"),
    ],
)  # fmt: skip
def test_bad_evaluation_sections(evaluation: dict, stages: list[dict], message: str):
    with pytest.raises(PipelineError, match=message):
        evaluated(stages, evaluation)
