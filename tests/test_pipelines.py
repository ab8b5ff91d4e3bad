"""Pipeline specs type-check every edge at load."""

from __future__ import annotations

import pytest

from nemotron_assets.pipelines import PipelineError, PipelineSpec, load_pipelines

PACKING = {"name": "a", "step": "data_prep/sft_packing", "consumes": {"training_jsonl": "chat"}}


def spec(stages, sources=None) -> dict:
    sources = sources or [{"name": "chat", "type": "training_jsonl", "path": "/x.jsonl"}]
    return {"name": "p", "description": "d", "sources": sources, "stages": stages}


def test_shipped_pipelines_load():
    tiny = next(p for p in load_pipelines() if p.name == "tiny")
    assert [s.name for s in tiny.stages][:4] == ["packed_parquet", "binidx", "dpo_data", "rlvr_data"]
    assert {s.name for s in tiny.stages if s.step == "eval/model_eval"} == {
        "eval_base",
        "eval_lora",
        "eval_merged",
        "eval_cpt",
    }
    assert tiny.params(tiny.stage("packed_parquet"))["pack_size"] == 256  # tiny preset
    assert tiny.params(tiny.stage("packed_parquet"))["algorithm"] == "first_fit_decreasing"  # pipeline config


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


def test_unset_source_variable_is_a_named_error(tmp_path):
    from nemotron_assets.errors import NamedError
    from nemotron_assets.execution import resolve_input
    from resources.artifact_store import ArtifactStore

    pipeline = PipelineSpec.parse(
        spec([], [{"name": "chat", "type": "training_jsonl", "path": "${NEMOTRON_INPUT_CHAT}"}])
    )
    with pytest.raises(NamedError, match=r"artifact_missing: .*NEMOTRON_INPUT_CHAT"):
        resolve_input(pipeline, "chat", ArtifactStore(root=str(tmp_path)))
