"""AutoModel LoRA/SFT through NeMo AutoModel's recipe on the tiny model, resume, and the LoRA merge."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import DATA
from helpers import another_tokenizer, job_spec, materialize, materialize_in_dagster, one_stage_pipeline, published
from transformers import AutoModelForCausalLM, AutoTokenizer

from nemotron_assets.artifacts import validate
from nemotron_assets.catalog import CATALOG
from nemotron_assets.digests import content_digest
from nemotron_assets.errors import NamedError
from nemotron_assets.execution import run_stage
from nemotron_assets.pipelines import PipelineSpec
from nemotron_assets.steps import InputArtifact, StepRun
from nemotron_assets.steps.automodel import train as automodel
from nemotron_assets.steps.launch import local_env
from nemotron_assets.steps.peft import merge_lora
from resources.artifact_store import ArtifactStore

CHAT = DATA / "tiny_chat.jsonl"


def lora_and_merge(base: Path | str, adapter_source: Path | None = None, **merge_config) -> PipelineSpec:
    """chat -> LoRA (tiny preset) -> merge into `base`; or merge an existing adapter directory."""
    sources = [{"name": "chat", "type": "training_jsonl", "path": str(CHAT)}]
    sources.append({"name": "base", "type": "checkpoint_hf", "path": str(base)})
    stages = [{"name": "lora", "step": "peft/automodel", "consumes": {"training_jsonl": "chat"}, "preset": "tiny"}]
    adapter = "lora"
    if adapter_source is not None:
        sources.append({"name": "adapter", "type": "checkpoint_lora", "path": str(adapter_source)})
        stages, adapter = [], "adapter"
    stages.append(
        {
            "name": "merged",
            "step": "convert/merge_lora",
            "consumes": {"checkpoint_lora": adapter, "checkpoint_hf": "base"},
            "config": merge_config,
        }
    )
    return PipelineSpec.parse({"name": "t", "description": "lora and merge", "sources": sources, "stages": stages})


@pytest.fixture(scope="module")
def trained(fixtures_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny LoRA and its merge, published once for the module."""
    store = ArtifactStore(root=str(tmp_path_factory.mktemp("store")))
    pipeline = lora_and_merge(fixtures_dir / "tiny-llama")
    lora = materialize(pipeline, store, "lora")
    merged = materialize(pipeline, store, "merged")
    return lora, merged


def test_lora_through_the_automodel_recipe(fixtures_dir: Path, trained):
    lora, _ = trained
    stats = validate(lora.path, "checkpoint_lora")  # adapter files and the recorded base
    assert stats["base_fingerprint"] == content_digest(fixtures_dir / "tiny-llama")
    assert lora.provenance["lora"]["rank"] == 16 and lora.provenance["lora"]["alpha"] == 32
    assert not any("lm_head" in m for m in lora.provenance["lora"]["target_modules"])
    assert lora.provenance["lora"]["data_version"] == content_digest(CHAT)
    assert lora.provenance["tokenizer"]["fingerprint"]
    assert lora.stats["steps"] == 10 and lora.stats["final_loss"] < lora.stats["first_loss"]
    assert lora.stats["tokens_per_second"] > 0
    assert (lora.path / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert lora.provenance["plots"] == {"loss curve": "loss_curve.png"}
    assert len((lora.path / "training_log.jsonl").read_text().splitlines()) == 10


def test_merged_model_equals_adapter_on_base(fixtures_dir: Path, trained):
    from peft import PeftModel

    lora, merged = trained
    assert merged.stats["max_logit_difference"] <= 1e-4
    assert validate(merged.path, "checkpoint_hf")["parameters"] == merged.stats["parameters"]
    tokenizer = AutoTokenizer.from_pretrained(merged.path)
    batch = tokenizer(["Who founded Zorbia?", "The Amber River"], return_tensors="pt", padding=True)
    base = AutoModelForCausalLM.from_pretrained(fixtures_dir / "tiny-llama")
    with torch.no_grad():
        before = base(**batch).logits
        expected = PeftModel.from_pretrained(base, lora.path)(**batch).logits  # wraps `base` in place
        actual = AutoModelForCausalLM.from_pretrained(merged.path)(**batch).logits
    assert torch.allclose(actual, expected, atol=1e-4)
    assert not torch.allclose(before, expected, atol=1e-4)  # the adapter did change the model


def test_merge_refuses_another_base(fixtures_dir: Path, trained, tmp_path: Path):
    lora, _ = trained
    other = Path(shutil.copytree(fixtures_dir / "tiny-llama", tmp_path / "other"))
    (other / "config.json").write_text((other / "config.json").read_text().replace('"rope_theta"', '"rope_theta_x"'))
    store = ArtifactStore(root=str(tmp_path / "store"))
    with pytest.raises(NamedError, match="base_model_mismatch: adapter adapter was trained on"):
        materialize(lora_and_merge(other, adapter_source=lora.path), store, "merged")
    assert published(store, ("t", "merged")) == []


def test_merge_that_changes_the_logits_publishes_nothing(fixtures_dir: Path, trained, tmp_path: Path):
    lora, _ = trained
    store = ArtifactStore(root=str(tmp_path))
    pipeline = lora_and_merge(fixtures_dir / "tiny-llama", adapter_source=lora.path, torch_dtype="bfloat16")
    with pytest.raises(NamedError, match=r"merge_logits_mismatch: max \|logit difference\| .* of the largest"):
        materialize(pipeline, store, "merged")  # bf16 rounding of the folded weights moves logits by ~1e-2
    assert published(store, ("t", "merged")) == [".work"]  # no version: only the merge job's work directory


def test_merge_needs_the_recorded_base(fixtures_dir: Path, trained, tmp_path: Path):
    lora, _ = trained
    bare = Path(shutil.copytree(lora.path, tmp_path / "bare"))
    (bare / "provenance.json").unlink()
    with pytest.raises(NamedError, match="base_not_recorded_for_merge"):
        materialize(
            lora_and_merge(fixtures_dir / "tiny-llama", adapter_source=bare),
            ArtifactStore(root=str(tmp_path)),
            "merged",
        )


def merge_step(tmp_path: Path, adapter: Path, base: Path, output: Path, version: str = "v", **params) -> StepRun:
    """A convert/merge_lora run of `adapter` into `base`, writing `output`; launching anything fails the test."""

    def no_launch(command: list[str], env: dict[str, str]) -> None:
        raise AssertionError("the merge job was launched")

    step = CATALOG.step("convert/merge_lora")
    inputs = {
        "checkpoint_lora": InputArtifact("adapter", "checkpoint_lora", adapter, version),
        "checkpoint_hf": InputArtifact("base", "checkpoint_hf", base, "b"),
    }
    return StepRun(step, step.preset_values("default") | params, inputs, output, tmp_path / "work", launcher=no_launch)


def adapter_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text("{}")
    return path


def test_merge_needs_an_adapter_config(fixtures_dir: Path, tmp_path: Path):
    nested = adapter_dir(tmp_path / "run" / "checkpoint-10")
    for given, found in ((tmp_path / "run", str(nested)), (adapter_dir(tmp_path / "x") / "empty", "nor below it")):
        given.mkdir(exist_ok=True)
        run = merge_step(tmp_path, given, fixtures_dir / "tiny-llama", tmp_path / "out")
        with pytest.raises(NamedError, match=f"adapter_config_missing: no adapter_config.json in {given}") as caught:
            merge_lora.run(run)
        assert found in caught.value.detail


def test_merge_refuses_an_output_inside_an_input(fixtures_dir: Path, tmp_path: Path):
    base = Path(shutil.copytree(fixtures_dir / "tiny-llama", tmp_path / "base"))
    adapter = adapter_dir(tmp_path / "adapter")
    for output, name in ((base / "merged", "base"), (tmp_path, "adapter")):
        with pytest.raises(NamedError, match=f"output_path_overlaps_inputs: {output} overlaps the {name}"):
            merge_lora.run(merge_step(tmp_path, adapter, base, output))


@pytest.mark.parametrize("case", ["backend", "megatron base", "megatron adapter"])
def test_megatron_adapters_are_not_merged_here(fixtures_dir: Path, tmp_path: Path, case: str):
    adapter = adapter_dir(tmp_path / "adapter")
    run = merge_step(tmp_path, adapter, fixtures_dir / "tiny-llama", tmp_path / "out")
    if case == "backend":
        run = dataclasses.replace(run, params=run.params | {"backend": "megatron_bridge"})
    elif case == "megatron base":
        megatron = InputArtifact("megatron", "checkpoint_megatron", tmp_path / "megatron", "m")
        run = dataclasses.replace(run, inputs=run.inputs | {"checkpoint_megatron": megatron})
    else:
        (adapter / "latest_checkpointed_iteration.txt").write_text("10")
    with pytest.raises(NamedError, match="megatron_adapter_merge_unavailable: ") as caught:
        merge_lora.run(run)
    assert "does not implement the Megatron-Bridge merge" in caught.value.recovery


def test_an_adapter_that_failed_its_gate_is_not_merged(fixtures_dir: Path, tmp_path: Path):
    adapter = adapter_dir(tmp_path / "t" / "lora" / "v1")
    gates = tmp_path / "t" / "lora" / ".gates"
    gates.mkdir()
    decision = {"scored": "v1", "evaluations": ["e0", "e1"], "tolerance": 0.01, "passed": False}
    (gates / "a.json").write_text(json.dumps(decision))
    (gates / "b.json").write_text(json.dumps(decision | {"scored": "v0", "passed": True}))  # another version's pass
    run = merge_step(tmp_path, adapter, fixtures_dir / "tiny-llama", tmp_path / "out", version="v1")
    with pytest.raises(NamedError, match="adapter_not_validated: adapter version v1 failed its quality gate"):
        merge_lora.run(run)
    (gates / "c.json").write_text(json.dumps(decision | {"tolerance": 0.05, "passed": True}))
    with pytest.raises(NamedError, match="invalid_adapter_config"):  # passed a gate: the merge goes on to validate
        merge_lora.run(run)


def test_full_sft_gives_a_consolidated_hf_checkpoint(fixtures_dir: Path, tmp_path: Path):
    store = ArtifactStore(root=str(tmp_path))
    result = materialize(one_stage_pipeline("sft/automodel", CHAT, **{"step_scheduler.max_steps": 4}), store)
    assert validate(result.path, "checkpoint_hf")["architectures"] == ["LlamaForCausalLM"]
    assert AutoModelForCausalLM.from_pretrained(result.path).num_parameters() == 123_712
    assert result.stats["steps"] == 4


def test_packed_parquet_is_refused_with_the_catalog_error(fixtures_dir: Path, tmp_path: Path):
    packed = materialize(one_stage_pipeline("data_prep/sft_packing", CHAT), ArtifactStore(root=str(tmp_path / "p")))
    with pytest.raises(NamedError, match="packed_parquet_used_with_automodel: data at .* is packed_parquet"):
        materialize(one_stage_pipeline("peft/automodel", packed.path), ArtifactStore(root=str(tmp_path / "s")))


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "only a question"}],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}],
    ],
)
def test_a_conversation_without_a_reply_is_refused_before_training(fixtures_dir: Path, tmp_path: Path, messages):
    """Valid training_jsonl (an RLHF prompt looks like this) but nothing to fine-tune on: refused before launch."""
    data = tmp_path / "chat.jsonl"
    data.write_text(CHAT.read_text() + json.dumps({"messages": messages}) + "\n")
    validate(data, "training_jsonl")
    store = ArtifactStore(root=str(tmp_path / "s"))
    with pytest.raises(NamedError, match="no_assistant_turn: .*chat.jsonl:49") as raised:
        materialize(one_stage_pipeline("peft/automodel", data), store)
    assert "dropped_rows" in raised.value.recovery and published(store) in ([], [".work"])  # no version


@pytest.mark.parametrize("step", ["sft/automodel", "peft/automodel"])
def test_a_model_that_is_not_there_is_named_before_launch(step: str, tmp_path: Path):
    pipeline = one_stage_pipeline(step, CHAT, **{"model.pretrained_model_name_or_path": str(tmp_path / "nowhere")})
    store = ArtifactStore(root=str(tmp_path / "s"))
    with pytest.raises(NamedError, match="model_unavailable: .*nowhere") as raised:
        materialize(pipeline, store)
    assert "fixtures build" in raised.value.recovery and published(store) in ([], [".work"])


def test_model_without_chat_template(fixtures_dir: Path, tmp_path: Path):
    model = Path(shutil.copytree(fixtures_dir / "tiny-llama", tmp_path / "model"))
    (model / "chat_template.jinja").unlink()
    pipeline = one_stage_pipeline("peft/automodel", CHAT, **{"model.pretrained_model_name_or_path": str(model)})
    with pytest.raises(NamedError, match="chat_template_missing"):
        materialize(pipeline, ArtifactStore(root=str(tmp_path / "s")))


def test_out_of_memory_is_named_with_its_recovery(fixtures_dir: Path, tmp_path: Path):
    def out_of_memory(command: list[str], env: dict[str, str]) -> None:
        Path(job_spec(command).failure_file).write_text(json.dumps({"error": "oom", "detail": "CUDA out of memory"}))
        raise RuntimeError("child exited 1")

    step = CATALOG.step("peft/automodel")
    params = step.preset_values("tiny") | {"model.pretrained_model_name_or_path": str(fixtures_dir / "tiny-llama")}
    inputs = {"training_jsonl": InputArtifact("chat", "training_jsonl", CHAT, "v")}
    run = StepRun(step, params, inputs, tmp_path / "out", tmp_path / "work", launcher=out_of_memory)
    with pytest.raises(NamedError) as caught:
        automodel.run(run)
    assert caught.value.name == "oom" and "sequence length" in caught.value.recovery


def test_a_killed_run_resumes_from_its_last_checkpoint(fixtures_dir: Path, tmp_path: Path, caplog):
    store = ArtifactStore(root=str(tmp_path))
    pipeline = one_stage_pipeline("peft/automodel", CHAT)
    spec = pipeline.stage("out")

    def killed_after_first_checkpoint(command: list[str], env: dict[str, str]) -> None:
        process = subprocess.Popen(command, env=local_env(env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        latest = Path(job_spec(command).work_dir) / "checkpoints" / "LATEST"
        while not latest.exists() and process.poll() is None:
            time.sleep(0.2)
        process.kill()
        process.wait()
        raise RuntimeError("node lost")

    with pytest.raises(RuntimeError, match="node lost"):
        run_stage(pipeline, spec, pipeline.params(spec), store, "local_cpu", launcher=killed_after_first_checkpoint)
    assert published(store) == [".work"]  # nothing published; the checkpoint waits in the work directory
    with caplog.at_level("INFO"):
        result = run_stage(pipeline, spec, pipeline.params(spec), store, "local_cpu")
    assert any(
        "Loading checkpoint from" in r.getMessage() and "epoch_0_step_4" in r.getMessage() for r in caplog.records
    )
    assert result.stats["steps"] == 10
    assert not list(store.artifact_dir(("t", "out")).glob(".work/*"))  # removed once published


def test_training_through_dagster_pipes(fixtures_dir: Path, tmp_path: Path):
    import dagster as dg

    instance = dg.DagsterInstance.ephemeral()
    result = materialize_in_dagster(lora_and_merge(fixtures_dir / "tiny-llama"), tmp_path, instance=instance)
    assert result.success
    metadata = result.asset_materializations_for_node("t__lora")[0].metadata
    assert metadata["steps"].value == 10 and metadata["final_loss"].value < metadata["first_loss"].value
    assert metadata["loss_curve"].value.startswith("![loss curve](data:image/png;base64,")
    streamed = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any(m.startswith("step 9: loss") for m in streamed)  # reported by the trainer over Pipes
    checks = {(e.asset_key.path[-1], e.passed) for e in result.get_asset_check_evaluations()}
    assert {("lora", True), ("merged", True)} <= checks


def cpt_pipeline(tokenizer: Path) -> PipelineSpec:
    return PipelineSpec.parse(
        {
            "name": "t",
            "description": "continued pretraining",
            "sources": [{"name": "corpus", "type": "filtered_jsonl", "path": str(DATA / "tiny_corpus.jsonl")}],
            "stages": [
                {
                    "name": "bins",
                    "step": "data_prep/pretrain_prep",
                    "consumes": {"filtered_jsonl": "corpus"},
                    "preset": "tiny",
                    "config": {"tokenizer": str(tokenizer)},
                },
                {"name": "cpt", "step": "pretrain/automodel", "consumes": {"binidx": "bins"}, "preset": "tiny"},
            ],
        }
    )


def test_continued_pretraining_from_binidx(fixtures_dir: Path, tmp_path: Path):
    store = ArtifactStore(root=str(tmp_path))
    pipeline = cpt_pipeline(fixtures_dir / "tiny-bpe")
    bins = materialize(pipeline, store, "bins")
    result = materialize(pipeline, store, "cpt")
    assert validate(result.path, "checkpoint_hf")["parameters"] == 123_712
    assert result.stats["steps"] == 10 and result.stats["final_loss"] < result.stats["first_loss"]
    assert result.provenance["data_version"] == bins.version


def test_bins_from_another_tokenizer_are_refused(fixtures_dir: Path, tmp_path: Path):
    other = another_tokenizer(fixtures_dir / "tiny-bpe", tmp_path / "other-bpe")
    store = ArtifactStore(root=str(tmp_path / "store"))
    pipeline = cpt_pipeline(other)
    materialize(pipeline, store, "bins")
    with pytest.raises(NamedError, match="tokenizer_or_sequence_mismatch: bins was tokenized with"):
        materialize(pipeline, store, "cpt")
    assert published(store, ("t", "cpt")) == []


def test_pretraining_from_scratch_builds_the_architecture_only(tmp_path: Path):
    step = CATALOG.step("pretrain/automodel")
    params = step.preset_values("tiny") | {"load_weights": False}
    model = automodel.model_config(StepRun(step, params, {}, tmp_path), gpus=0)
    assert (
        model["_target_"].endswith("from_config") and model["config"] == params["model.pretrained_model_name_or_path"]
    )
    assert "pretrained_model_name_or_path" not in model


def test_scheduler_keys_the_installed_automodel_does_not_take_are_named_before_loading(tmp_path: Path):
    from nemotron_assets.job import JobError
    from nemotron_assets.steps.automodel.job import check_scheduler_keys

    step = CATALOG.step("pretrain/automodel")
    chat = InputArtifact(name="chat", type="training_jsonl", path=CHAT, version="v")
    run = StepRun(step, step.preset_values("default"), {"training_jsonl": chat}, tmp_path, tmp_path / "w")
    recipe = automodel.recipe_config(run, 0)
    check_scheduler_keys(recipe)  # every key the step writes is one this AutoModel takes
    recipe["step_scheduler"]["warmup_ratio"] = 0.1  # a key of another release
    with pytest.raises(JobError) as e:
        check_scheduler_keys(recipe)
    assert e.value.name == "unsupported_scheduler_kwargs" and "['warmup_ratio']" in e.value.detail


@pytest.mark.parametrize(("gpus", "weights"), [(0, "float32"), (1, "bfloat16"), (8, "float32")])
def test_recipe_config_for_the_hardware(gpus: int, weights: str, tmp_path: Path):
    """bf16 on one GPU means bf16 weights (AutoModel does not shard one rank, so no FSDP2 policy casts them);
    several GPUs keep fp32 masters under the policy. GPUs get fused AdamW and NCCL; `compile` reaches FSDP2."""
    from nemo_automodel.components.distributed.config import FSDP2Config

    step = CATALOG.step("sft/automodel")
    params = step.preset_values("default") | {"compile": True}
    chat = InputArtifact(name="chat", type="training_jsonl", path=CHAT, version="v")
    run = StepRun(step, params, {"training_jsonl": chat}, output_dir=tmp_path, work_dir=tmp_path / "w", gpus=gpus)
    config = automodel.recipe_config(run, gpus)
    assert config["model"]["torch_dtype"] == weights
    assert config["optimizer"].get("fused", False) is (gpus > 0)
    assert config["dist_env"]["backend"] == ("nccl" if gpus else "gloo")
    assert config["distributed"]["enable_compile"] is True
    assert {"enable_compile", "mp_policy"} <= {f.name for f in dataclasses.fields(FSDP2Config)}
    assert config["checkpoint"]["checkpoint_dir"] == tmp_path / "w" / "checkpoints"  # a Path: mapped into the job
