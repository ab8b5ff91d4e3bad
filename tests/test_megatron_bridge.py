"""sft/peft/pretrain megatron_bridge: the invariants checked before launch (each named error), the launch spec and
torchrun command, the ConfigContainer built and validated by Megatron-Bridge itself, and packed attention."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import DATA
from helpers import job_spec, materialize, one_stage_pipeline
from test_megatron_contract import megatron_run

from nemotron_assets.artifacts import validate
from nemotron_assets.catalog import CATALOG
from nemotron_assets.errors import NamedError
from nemotron_assets.guardrails import check_hardware
from nemotron_assets.job import JobSpec, command
from nemotron_assets.planning import Hardware, Have, Intents, plan
from nemotron_assets.steps import InputArtifact, StepRun
from nemotron_assets.steps.megatron_bridge import train as megatron_bridge
from nemotron_assets.tracking import TrackedRun, WandbTracker
from resources.artifact_store import ArtifactStore, write_provenance
from resources.profile import load_profile

SEQ = 2048
TINY_LAYOUT = {
    "seq_length": SEQ,
    "dataset.packed_sequence_specs.packed_sequence_size": SEQ,  # sft only; the others use seq_length
    "model.tensor_model_parallel_size": 1,
    "model.pipeline_model_parallel_size": 1,
    "model.context_parallel_size": 1,
    "train.global_batch_size": 2,
    "train.train_iters": 4,
}


@pytest.fixture(scope="module")
def packed(fixtures_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped chat set packed at 2048 with the tiny Llama's tokenizer and template (3 bins)."""
    store = ArtifactStore(root=str(tmp_path_factory.mktemp("packed")))
    pipeline = one_stage_pipeline(
        "data_prep/sft_packing", DATA / "tiny_chat.jsonl", tokenizer=str(fixtures_dir / "tiny-llama"), pack_size=SEQ,
        num_shards=1, train_ratio=1.0, valid_ratio=0.0, test_ratio=0.0,
    )  # fmt: skip
    return materialize(pipeline, store).path


class Launches:
    """A launcher that records the command and the spec it was handed, and writes what `outcome` says."""

    def __init__(self, outcome=None):
        self.commands: list[list[str]] = []
        self.outcome = outcome

    def __call__(self, command: list[str], env: dict[str, str]) -> None:
        self.commands.append(command)
        self.env = env
        self.job = job_spec(command)
        self.spec = self.job.args
        if self.outcome:
            self.outcome(self.job, env)


def step_run(
    step: str, tmp_path: Path, inputs: dict[str, Path], gpus: int = 1, launcher=None, **params: Any
) -> StepRun:
    spec = CATALOG.step(step)
    values = spec.preset_values("default")
    values |= {name: value for name, value in TINY_LAYOUT.items() if name in values} | params  # what the step declares
    artifacts = {port: InputArtifact(path.name, port, path, "v1") for port, path in inputs.items()}
    output = tmp_path / "out"
    output.mkdir(exist_ok=True)
    return StepRun(spec, values, artifacts, output, tmp_path / "work", gpus, launcher=launcher or Launches())


def expect(error: str, run: StepRun) -> NamedError:
    with pytest.raises(NamedError) as e:
        megatron_bridge.run(run)
    assert e.value.name == error and e.value.recovery == run.step.recovery(error)
    assert not list(run.output_dir.iterdir())  # nothing written to the artifact
    return e.value


def trained(job: JobSpec, env: dict[str, str]) -> None:
    """What Megatron-Bridge leaves under checkpoint.save after 4 iterations, saved at 2 and 4."""
    megatron_run(Path(job.args["checkpoint"]["save"]), iterations=(2, 4), latest=4)


def test_sft_launches_torchrun_on_the_bins_and_publishes_the_last_iteration(fixtures_dir: Path, packed: Path, tmp_path):
    launches = Launches(trained)
    model = str(fixtures_dir / "tiny-llama")
    run = step_run("sft/megatron_bridge", tmp_path, {"packed_parquet": packed}, 1, launches, hf_model_path=model)
    result = megatron_bridge.run(run)
    assert launches.commands[0] == command(str(run.work_dir / "job-megatron_bridge.train.json"))
    assert launches.job.backend == "megatron_bridge.train" and launches.job.torchrun  # torchrun even on one GPU
    assert launches.job.nproc_per_node == 1
    spec = launches.spec
    assert spec["mode"] == "sft" and spec["seq_length"] == SEQ and spec["world_size"] == 1
    assert spec["peft"]["dim"] == 32  # the catalog's default: LoRA inside the Megatron model
    bins = np.load(spec["dataset"]["path"], allow_pickle=True)
    table = pq.read_table(sorted((packed / "splits" / "train").glob("*.parquet"))[0])
    assert [b["input_ids"] for b in bins] == table["input_ids"].to_pylist()  # the same bins, unchanged
    metadata = json.loads(Path(spec["dataset"]["metadata"]).read_text())[0]
    assert metadata["max_samples_per_bin"] == max(len(s) for s in table["seq_start_id"].to_pylist())
    assert sorted(p.name for p in run.output_dir.iterdir()) == ["iter_0000004", "latest_checkpointed_iteration.txt"]
    assert validate(run.output_dir, "checkpoint_megatron")["iteration"] == 4 and result.stats["iteration"] == 4


def test_pack_size_must_equal_seq_length(fixtures_dir: Path, packed: Path, tmp_path):
    model = str(fixtures_dir / "tiny-llama")
    run = step_run("sft/megatron_bridge", tmp_path, {"packed_parquet": packed}, hf_model_path=model, seq_length=4096)
    assert "2048" in expect("pack_size_mismatch", run).detail


def test_bins_made_with_another_chat_template(fixtures_dir: Path, packed: Path, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(fixtures_dir / "tiny-llama", model)
    (model / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    run = step_run("sft/megatron_bridge", tmp_path, {"packed_parquet": packed}, hf_model_path=str(model))
    assert "chat template" in expect("tokenizer_mismatch", run).detail


@pytest.mark.parametrize("step", ["sft/megatron_bridge", "peft/megatron_bridge"])
def test_bins_that_train_no_token(step: str, fixtures_dir: Path, packed: Path, tmp_path):
    untrained = Path(shutil.copytree(packed, tmp_path / "packed"))
    for shard in (untrained / "splits" / "train").glob("*.parquet"):
        table = pq.read_table(shard)
        masks = [[0] * len(mask) for mask in table["loss_mask"].to_pylist()]
        pq.write_table(table.set_column(table.schema.get_field_index("loss_mask"), "loss_mask", [masks]), shard)
    inputs = {"packed_parquet": untrained, "checkpoint_megatron": megatron_run(tmp_path / "base")}
    run = step_run(step, tmp_path, inputs, hf_model_path=str(fixtures_dir / "tiny-llama"))
    assert "no trainable token" in expect("bad_loss_masks_or_template", run).detail


def test_global_batch_not_divisible_by_data_parallel(fixtures_dir: Path, packed: Path, tmp_path):
    model = str(fixtures_dir / "tiny-llama")
    inputs = {"packed_parquet": packed}
    run = step_run("sft/megatron_bridge", tmp_path, inputs, 4, hf_model_path=model, **{"train.global_batch_size": 6})
    assert "data parallel 4" in expect("bad_parallel_batch_shape", run).detail


def test_a_named_tracker_reaches_bridges_logger_and_the_provenance(fixtures_dir: Path, packed: Path, tmp_path):
    """The job gets Megatron-Bridge's logger fields (test_megatron_bridge_config.py sets them on its LoggerConfig)
    and the tracker's environment; the result names the run."""
    launches = Launches(trained)
    run = step_run("sft/megatron_bridge", tmp_path, {"packed_parquet": packed}, 1, launches,
                   hf_model_path=str(fixtures_dir / "tiny-llama"))  # fmt: skip
    tracker = WandbTracker(kind="wandb", project="p", entity="e", mode="offline")
    run = dataclasses.replace(run, tracking=TrackedRun(tracker, "g/sft", {}, "v1", tmp_path / "runs"))
    result = megatron_bridge.run(run)
    assert launches.spec["tracking"] == json.loads(json.dumps(run.tracking.bridge(), default=str))  # as read
    assert launches.spec["tracking"]["wandb_project"] == "p"
    assert launches.env["WANDB_MODE"] == "offline" and launches.env["WANDB_RUN_ID"] == "v1"
    assert result.provenance["tracking"] == run.tracking.record(run.work_dir)


@pytest.mark.parametrize("step", ["sft/megatron_bridge", "peft/megatron_bridge", "pretrain/megatron_bridge"])
def test_fewer_gpus_than_one_model_replica(step: str, fixtures_dir: Path, packed: Path, tmp_path):
    inputs = {"packed_parquet": packed} if step != "pretrain/megatron_bridge" else {}
    layout = {"model.tensor_model_parallel_size": 4, "model.pipeline_model_parallel_size": 2}
    run = step_run(step, tmp_path, inputs, 4, hf_model_path=str(fixtures_dir / "tiny-llama"), **layout)
    assert "needs 8 GPUs; 4 here" in expect("insufficient_hardware", run).detail


def test_fewer_bins_than_a_global_batch(fixtures_dir: Path, packed: Path, tmp_path):
    model = str(fixtures_dir / "tiny-llama")
    run = step_run(
        "sft/megatron_bridge",
        tmp_path,
        {"packed_parquet": packed},
        hf_model_path=model,
        **{"train.global_batch_size": 8},
    )
    expect("too_few_packed_bins", run)


def test_missing_packed_data(fixtures_dir: Path, tmp_path):
    params = {
        "hf_model_path": str(fixtures_dir / "tiny-llama"),
        "dataset.packed_sequence_specs.packed_train_data_path": str(tmp_path / "none/*.parquet"),
    }
    expect("missing_packed_data", step_run("sft/megatron_bridge", tmp_path, {}, **params))


def test_lora_needs_a_megatron_base(fixtures_dir: Path, packed: Path, tmp_path):
    model = str(fixtures_dir / "tiny-llama")
    expect(
        "missing_base_checkpoint",
        step_run("peft/megatron_bridge", tmp_path, {"packed_parquet": packed}, hf_model_path=model),
    )
    hf_base = {"packed_parquet": packed, "checkpoint_megatron": fixtures_dir / "tiny-llama"}
    expect("missing_base_checkpoint", step_run("peft/megatron_bridge", tmp_path, hf_base, hf_model_path=model))


def test_adapter_written_into_its_base(fixtures_dir: Path, packed: Path, tmp_path):
    base = megatron_run(tmp_path / "work" / "checkpoints" / "base")  # inside the stage's own save directory
    inputs = {"packed_parquet": packed, "checkpoint_megatron": base}
    params = {"hf_model_path": str(fixtures_dir / "tiny-llama")}
    expect("base_and_adapter_paths_mixed", step_run("peft/megatron_bridge", tmp_path, inputs, **params))


def test_peft_trains_lora_from_the_concrete_base(fixtures_dir: Path, packed: Path, tmp_path):
    base = megatron_run(tmp_path / "base")
    launches = Launches(trained)
    inputs = {"packed_parquet": packed, "checkpoint_megatron": base / "iter_0000005"}
    run = step_run(
        "peft/megatron_bridge", tmp_path, inputs, 1, launches, hf_model_path=str(fixtures_dir / "tiny-llama")
    )
    result = megatron_bridge.run(run)
    write_provenance(run.output_dir, {"type": "checkpoint_lora", **result.provenance})
    adapter = validate(run.output_dir, "checkpoint_lora")  # the adapter, with its exact Megatron base recorded
    assert adapter["format"] == "megatron" and adapter["rank"] == 32 and adapter["iteration"] == 4
    assert adapter["base_model"] == str((base / "iter_0000005").resolve())
    pinned = Path(launches.spec["checkpoint"]["pretrained_checkpoint"])  # iteration 5, not the tracker's 10
    assert (pinned / "latest_checkpointed_iteration.txt").read_text() == "5"
    assert (pinned / "iter_0000005").resolve() == (base / "iter_0000005").resolve()
    assert (pinned / "latest_train_state.pt").resolve() == (base / "iter_0000005" / "train_state.pt").resolve()
    assert launches.spec["peft"]["target_modules"] == ["linear_qkv", "linear_proj"]


def test_pretrain_needs_a_blend(tmp_path):
    expect("missing_blend_json", step_run("pretrain/megatron_bridge", tmp_path, {}, **{"dataset.data_paths": "/none"}))


def test_cpt_keeps_the_checkpoint_sequence_length(tmp_path):
    base = megatron_run(tmp_path / "base")
    (base / "iter_0000010" / "run_config.yaml").write_text("model:\n  seq_length: 8192\n")
    run = step_run("pretrain/megatron_bridge", tmp_path, {"checkpoint_megatron": base}, seq_length=4096)
    assert "8192" in expect("sequence_length_mismatch", run).detail


def test_oom_is_named(fixtures_dir: Path, packed: Path, tmp_path):
    def out_of_memory(job, env):
        Path(job.failure_file).write_text(json.dumps({"error": "oom", "detail": "CUDA out of memory"}))
        raise RuntimeError("exit 1")

    model = str(fixtures_dir / "tiny-llama")
    run = step_run(
        "sft/megatron_bridge", tmp_path, {"packed_parquet": packed}, 1, Launches(out_of_memory), hf_model_path=model
    )
    expect("oom", run)


@pytest.mark.parametrize("step", ["sft/megatron_bridge", "peft/megatron_bridge", "pretrain/megatron_bridge"])
def test_nano3_and_super3_need_their_gpus(step: str):
    one_node = load_profile("slurm_1node")
    check_hardware(CATALOG.step(step), {"hf_model_path": "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16"}, one_node)
    with pytest.raises(NamedError) as e:
        check_hardware(CATALOG.step(step), {"hf_model_path": "nvidia/NVIDIA-Nemotron-3-Super-120B-A12B-BF16"}, one_node)
    assert e.value.name == "insufficient_hardware" and "32 for Super3" in e.value.recovery


@pytest.mark.parametrize(
    ("model", "hardware"),
    [("nano3", Hardware(1, 8, "h100")), ("nano3", Hardware(2, 8, "h200")), ("super3", Hardware(4, 8, "h100"))],
)
def test_the_planners_layout_passes_the_launch_checks(model: str, hardware: Hardware, tmp_path):
    """Parallelism comes from the planner's hardware table; the step accepts what the planner sets."""
    planned = plan("sft", [Have.parse("training_jsonl")], hardware, Intents(model=model))
    stage = next(s for s in planned.stages if s.step == "sft/megatron_bridge")
    spec = CATALOG.step(stage.step)
    params = spec.preset_values("default") | stage.config
    run = StepRun(spec, params, {}, tmp_path, tmp_path / "work", hardware.gpus_per_node)
    megatron_bridge.check_batch_shape(run, hardware.gpus)
    assert params["seq_length"] == params["dataset.packed_sequence_specs.packed_sequence_size"]


def initialize_ub():  # named as Transformer Engine's userbuffer set-up
    raise RuntimeError("CUDA multicast is not supported on this fabric")


def test_a_failure_inside_transformer_engines_userbuffer_set_up_is_named():
    from nemotron_assets.steps.megatron_bridge.train_job import userbuffer_failure

    with pytest.raises(RuntimeError) as inside:
        initialize_ub()
    named = userbuffer_failure(inside.value)
    assert named.name == "transformer_engine_userbuffer_failure" and "multicast" in named.detail
    assert "UB_SKIPMC=1" in CATALOG.step("pretrain/megatron_bridge").recovery(named.name)
    with pytest.raises(RuntimeError) as elsewhere:
        raise RuntimeError("CUDA multicast is not supported on this fabric")
    assert userbuffer_failure(elsewhere.value) is None  # the same message raised elsewhere is not this failure
