"""Each step receives its typed parameters: StepRun.p, generated per step from the catalog and validated."""

from __future__ import annotations

from pathlib import Path

import pytest

from nemotron_assets.catalog import CATALOG
from nemotron_assets.errors import NamedError
from nemotron_assets.steps import StepRun


def run_of(step_id: str, params: dict, tmp_path: Path) -> StepRun:
    return StepRun(CATALOG.step(step_id), params, {}, tmp_path / "out")


def test_typed_parameters_nest_dotted_names_and_fill_defaults(tmp_path: Path):
    step = CATALOG.step("sft/megatron_bridge")
    run = run_of(step.id, {"train.global_batch_size": 64, "seq_length": 2048}, tmp_path)
    assert (run.p.train.global_batch_size, run.p.seq_length) == (64, 2048)
    default = step.parameter("model.tensor_model_parallel_size").default
    assert run.p.model.tensor_model_parallel_size == default  # unset: the catalog's default
    packing = run_of("data_prep/sft_packing", {"valid_ratio": 0, "max_doc_tokens": None}, tmp_path).p
    assert packing.valid_ratio == 0.0 and isinstance(packing.valid_ratio, float)  # an int is a float, as declared
    assert (
        packing.max_doc_tokens is None
        and packing.pack_size == CATALOG.step("data_prep/sft_packing").parameter("pack_size").default
    )


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({"pack_size": "4096"}, "parameter 'pack_size': '4096' input should be a valid integer"),  # no coercion
        ({"pack_size": True}, "parameter 'pack_size': True input should be a valid integer"),
        ({"algorithm": "best_fit"}, "parameter 'algorithm': 'best_fit' input should be 'first_fit_decreasing'"),
        ({"pack_sise": 4096}, "parameter 'pack_sise': 4096 extra inputs are not permitted"),
    ],
)
def test_an_invalid_parameter_is_named(tmp_path: Path, params: dict, detail: str):
    run = run_of("data_prep/sft_packing", params, tmp_path)
    with pytest.raises(NamedError, match=f"invalid_parameter: data_prep/sft_packing: {detail}"):
        run.p  # noqa: B018 (validated on first read)


def test_every_step_has_a_typed_model_of_its_catalog_parameters():
    for step in CATALOG.steps.values():
        typed = step.typed_params(step.preset_values(next(iter(step.presets))))
        for param in step.parameters:
            value = typed
            for part in param.name.split("."):
                value = getattr(value, part)
            assert value == step.preset_values(next(iter(step.presets)))[param.name], (step.id, param.name)
