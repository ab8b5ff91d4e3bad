"""Automation of the cpt pipeline: the refresh schedule, the data-drop sensor, declarative refresh of the blend,
and data drops through Dagster end to end (only new drops tokenized; a failing gate keeps the good checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
from conftest import DATA

from nemotron_assets.errors import NamedError
from nemotron_assets.factory import build_definitions, pipeline_assets
from nemotron_assets.pipelines import PIPELINE_DIR, PipelineError, PipelineSpec, load_pipeline
from resources.artifact_store import PROMOTED, ArtifactStore
from resources.profile import HardwareProfile

GPU_STAGES = {"eval_base", "cpt", "eval_cpt"}


def cpt_spec(**evaluation) -> PipelineSpec:
    spec = load_pipeline(PIPELINE_DIR / "cpt.yaml")
    if not evaluation:
        return spec
    data = spec.model_dump(exclude={"stages"}) | {
        "stages": [s.model_dump() for s in spec.stages if s.step != "eval/model_eval"]
    }
    data["evaluation"] |= evaluation
    return PipelineSpec.parse(data)


def selected(defs: dg.Definitions, target) -> set[str]:
    """The asset names a schedule's or sensor's target selects."""
    return {key.path[-1] for key in target.job_def.selection.resolve(defs.resolve_asset_graph())}


def drop(inbox: Path, name: str, rows: slice) -> None:
    """A data drop: a slice of the shipped corpus, moved into the inbox complete (as a sensor expects)."""
    lines = (DATA / "tiny_corpus.jsonl").read_text().splitlines()[rows]
    staging = inbox / f".{name}"
    staging.write_text("\n".join(lines) + "\n")
    staging.rename(inbox / name)


@pytest.fixture
def inbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "inbox"
    directory.mkdir()
    monkeypatch.setenv("NEMOTRON_CPT_INBOX", str(directory))
    return directory


def test_schedule_runs_the_gpu_stages_weekly_with_runtime_and_retry_tags():
    defs = build_definitions([cpt_spec()])
    schedule = defs.get_schedule_def("cpt_refresh")
    assert schedule.cron_schedule == "0 3 * * 1" and schedule.execution_timezone == "UTC"
    assert selected(defs, schedule.target) == GPU_STAGES
    with dg.instance_for_test() as instance:
        (request,) = schedule.evaluate_tick(dg.build_schedule_context(instance=instance)).run_requests
    assert request.tags["dagster/max_runtime"] == str(24 * 3600)
    assert (
        request.tags["dagster/max_retries"] == "1" and request.tags["dagster/retry_on_asset_or_op_failure"] == "false"
    )


def test_schedule_cron_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("NEMOTRON_CPT_CRON", "30 1 * * *")
    assert build_definitions([cpt_spec()]).get_schedule_def("cpt_refresh").cron_schedule == "30 1 * * *"


def test_cheap_stages_refresh_declaratively_and_the_checkpoint_has_a_freshness_policy():
    graph = build_definitions([cpt_spec()]).resolve_asset_graph()
    node = {key.path[-1]: graph.get(key) for key in graph.get_all_asset_keys() if key.path[0] == "cpt"}
    assert [name for name, n in node.items() if n.automation_condition is not None] == ["corpus"]
    assert node["cpt"].freshness_policy is not None and node["corpus"].freshness_policy is None
    assert node["drop_tokens"].partitions_def.name == node["raw_corpus"].partitions_def.name == "cpt__raw_corpus"
    assert node["corpus"].partitions_def is None and node["cpt"].partitions_def is None


def test_sensor_turns_each_new_drop_into_a_partition_and_a_run(inbox: Path):
    defs = build_definitions([cpt_spec()])
    sensor = defs.get_sensor_def("cpt_raw_corpus_drops")
    drop(inbox, "drop_1.jsonl", slice(0, 8))
    (inbox / ".drop_2.jsonl").write_text("being written\n")  # hidden: not yet a drop
    with dg.instance_for_test() as instance:
        result = sensor(dg.build_sensor_context(instance=instance))
        (added,) = result.dynamic_partitions_requests
        assert added.partitions_def_name == "cpt__raw_corpus" and list(added.partition_keys) == ["drop_1.jsonl"]
        assert [(r.partition_key, r.run_key) for r in result.run_requests] == [("drop_1.jsonl", "drop_1.jsonl")]
        assert selected(defs, sensor.targets[0]) == {"drop_tokens"}
        instance.add_dynamic_partitions("cpt__raw_corpus", ["drop_1.jsonl"])
        assert isinstance(sensor(dg.build_sensor_context(instance=instance)), dg.SkipReason)


def test_a_partitioned_artifact_goes_whole_only_to_a_port_taking_all_partitions():
    data = cpt_spec().model_dump()
    data["stages"] = [s for s in data["stages"] if s["step"] != "eval/model_eval"]
    data["stages"][2]["consumes"] = {"binidx": "drop_tokens"}
    with pytest.raises(PipelineError, match="consumes the partitioned drop_tokens whole"):
        PipelineSpec.parse(data)


class Deployment:
    """The cpt pipeline on a test instance and store, its automation evaluated with Dagster's testing helpers and
    each requested run executed in process (what the daemon and run launcher do in a deployment)."""

    def __init__(self, spec: PipelineSpec, instance: dg.DagsterInstance, root: Path):
        self.defs, self.instance, self.store = build_definitions([spec]), instance, ArtifactStore(root=str(root))
        self.assets = pipeline_assets(spec)
        self.cursor = None
        self.tokenized: list[str] = []

    def execute(self, target, partition: str | None = None) -> dg.ExecuteInProcessResult:
        result = dg.materialize(
            self.assets,
            selection=target.job_def.selection if hasattr(target, "job_def") else target,
            partition_key=partition,
            instance=self.instance,
            resources={"artifact_store": self.store, "hardware": HardwareProfile(name="local_cpu")},
            raise_on_error=False,
        )
        events = result.get_asset_materialization_events()
        self.tokenized += [e.partition for e in events if e.asset_key.path[-1] == "drop_tokens"]
        return result

    def sensor_tick(self) -> None:
        sensor = self.defs.get_sensor_def("cpt_raw_corpus_drops")
        result = sensor(dg.build_sensor_context(instance=self.instance))
        for request in result.dynamic_partitions_requests:
            self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        for run in result.run_requests:
            assert self.execute(sensor.targets[0], run.partition_key).success

    def automation_tick(self) -> set[str]:
        evaluated = dg.evaluate_automation_conditions(self.defs, self.instance, cursor=self.cursor)
        self.cursor = evaluated.cursor
        requested = {r.key for r in evaluated.results if r.true_subset.size}
        if requested:
            assert self.execute(dg.AssetSelection.assets(*requested)).success
        return {key.path[-1] for key in requested}

    def scheduled_refresh(self) -> dg.ExecuteInProcessResult:
        schedule = self.defs.get_schedule_def("cpt_refresh")
        (request,) = schedule.evaluate_tick(dg.build_schedule_context(instance=self.instance)).run_requests
        return self.execute(schedule.target)

    def gate(self, result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
        return next(e for e in result.get_asset_check_evaluations() if e.check_name == "quality_gate")


def test_two_drops_two_refreshes_and_a_regressed_checkpoint_kept_from_consumers(
    fixtures_dir: Path, inbox: Path, tmp_path: Path
):
    with dg.instance_for_test() as instance:
        deployment = Deployment(cpt_spec(), instance, tmp_path / "store")
        assert deployment.automation_tick() == set()  # nothing to blend yet

        drop(inbox, "drop_1.jsonl", slice(0, 64))
        deployment.sensor_tick()
        assert deployment.automation_tick() == {"corpus"}
        assert deployment.automation_tick() == set()  # the daemon's next tick: the corpus is up to date
        first = deployment.scheduled_refresh()
        assert first.success and deployment.gate(first).passed
        good = deployment.store.current(("cpt", "cpt"))[0]

        drop(inbox, "drop_2.jsonl", slice(64, 128))
        deployment.sensor_tick()
        assert deployment.tokenized == ["drop_1.jsonl", "drop_2.jsonl"]  # drop 1 was not tokenized again
        assert deployment.automation_tick() == {"corpus"}
        assert deployment.automation_tick() == set()
        corpus = deployment.store.current(("cpt", "corpus"))[1]
        blend = json.loads((corpus / "blend.json").read_text())
        assert {Path(prefix).parent.name for prefix in blend["train"][1::2]} == {"drop_1.jsonl", "drop_2.jsonl"}
        assert sorted(p.name for p in (tmp_path / "store" / "cpt" / "drop_tokens").iterdir()) == [
            "drop_1.jsonl",
            "drop_2.jsonl",
        ]
        second = deployment.scheduled_refresh()
        assert second.success and deployment.gate(second).passed
        good = deployment.store.current(("cpt", "cpt"))[0]
        assert deployment.store.current(("cpt", "cpt"), PROMOTED)[0] == good

        # A third drop, and a gate demanding a gain no CPT step makes: the new checkpoint is published but withheld.
        strict = Deployment(cpt_spec(gate_tolerance={"cpt": -1.0}), instance, tmp_path / "store")
        drop(inbox, "drop_3.jsonl", slice(128, 192))
        strict.sensor_tick()
        assert strict.tokenized == ["drop_3.jsonl"]
        strict.execute(dg.AssetSelection.assets(dg.AssetKey(["cpt", "corpus"])))
        third = strict.scheduled_refresh()
        evaluation = strict.gate(third)
        assert not evaluation.passed and evaluation.metadata["current"].value == good
        regressed = third.asset_materializations_for_node("cpt__cpt")[0].metadata["data_version"].value
        assert regressed != good and (tmp_path / "store" / "cpt" / "cpt" / regressed).is_dir()
        assert strict.store.current(("cpt", "cpt"))[0] == good


def test_blend_refuses_drops_of_different_tokenizers(tmp_path: Path):
    from nemotron_assets.catalog import CATALOG
    from nemotron_assets.steps import InputArtifact, StepRun
    from nemotron_assets.steps.data_prep.blend import run

    parts = []
    for name, fingerprint in (("a", "x"), ("b", "y")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "provenance.json").write_text(
            json.dumps({"type": "binidx", "tokenizer": {"fingerprint": fingerprint}})
        )
        parts.append(InputArtifact(name, "binidx", tmp_path / name, name))
    corpus = InputArtifact("drops", "binidx", tmp_path, "v", tuple(parts))
    step = CATALOG.step("data_prep/blend")
    with pytest.raises(NamedError) as error:
        run(StepRun(step, {}, {"binidx": corpus}, tmp_path / "out"))
    assert error.value.name == "tokenizer_mismatch" and "same tokenizer" in str(error.value)
