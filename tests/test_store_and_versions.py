"""Atomic publication, content-hash data versions, and reuse of unchanged artifacts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DATA
from helpers import materialize, one_stage_pipeline, published

from nemotron_assets import cli, digests, execution, versions
from nemotron_assets.catalog import CATALOG
from nemotron_assets.errors import NamedError
from nemotron_assets.paths import PACKAGE_DIR
from nemotron_assets.steps.data_prep import sft_packing
from resources import artifact_store
from resources.artifact_store import WORK, ArtifactStore, verify


def test_failed_build_leaves_nothing(store: ArtifactStore):
    def build(staging: Path):
        (staging / "half.parquet").write_text("partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        store.publish(("t", "out"), "v1", build)
    assert published(store) == []
    assert store.current(("t", "out")) is None


def test_publish_is_first_writer_wins(store: ArtifactStore):
    path, _ = store.publish(("t", "out"), "v1", lambda d: (d / "a").write_text("first"))
    store.publish(("t", "out"), "v1", lambda d: (d / "a").write_text("second"))
    assert (path / "a").read_text() == "first"
    assert published(store) == ["CURRENT", "v1"]


def test_default_root_follows_the_environment(artifact_root: Path):
    assert ArtifactStore().base == artifact_root


def test_unchanged_inputs_are_reused(fixtures_dir: Path, store: ArtifactStore, monkeypatch: pytest.MonkeyPatch):
    pipeline = one_stage_pipeline("data_prep/sft_packing", DATA / "tiny_chat.jsonl")
    first = materialize(pipeline, store)
    monkeypatch.setattr(sft_packing, "run", lambda run: pytest.fail("recomputed an unchanged artifact"))
    second = materialize(pipeline, store)
    assert (second.version, second.reused, first.reused) == (first.version, True, False)
    assert second.stats == first.stats


def test_a_crashed_run_rebuilds_to_the_same_version(fixtures_dir: Path, store: ArtifactStore, monkeypatch):
    pipeline = one_stage_pipeline("data_prep/sft_packing", DATA / "tiny_chat.jsonl")
    real = sft_packing.run

    def crash(run):
        real(run)
        raise KeyboardInterrupt  # killed after writing everything, before publication

    monkeypatch.setattr(sft_packing, "run", crash)
    with pytest.raises(KeyboardInterrupt):
        materialize(pipeline, store)
    assert published(store) == []
    monkeypatch.setattr(sft_packing, "run", real)
    version = materialize(pipeline, store).version
    clean = materialize(pipeline, ArtifactStore(root=str(store.base / "clean"))).version
    assert version == clean


def test_versions_follow_inputs_params_and_tokenizer(fixtures_dir: Path, store: ArtifactStore, tmp_path: Path):
    base = materialize(one_stage_pipeline("data_prep/sft_packing", DATA / "tiny_chat.jsonl"), store).version

    data = tmp_path / "chat.jsonl"
    data.write_text(
        (DATA / "tiny_chat.jsonl").read_text() + (DATA / "tiny_chat.jsonl").read_text().splitlines()[0] + "\n"
    )
    changed_input = materialize(one_stage_pipeline("data_prep/sft_packing", data), store).version

    changed_param = materialize(
        one_stage_pipeline("data_prep/sft_packing", DATA / "tiny_chat.jsonl", seed=1), store
    ).version

    tokenizer = Path(shutil.copytree(fixtures_dir / "tiny-bpe", tmp_path / "tok"))
    template = tokenizer / "chat_template.jinja"
    template.write_text(template.read_text().replace("<|im_start|>", "<|im_start|> "))
    pipeline = one_stage_pipeline("data_prep/sft_packing", DATA / "tiny_chat.jsonl", tokenizer=str(tokenizer))
    changed_template = materialize(pipeline, store)
    assert len({base, changed_input, changed_param, changed_template.version}) == 4
    assert (
        changed_template.provenance["tokenizer"]["chat_template_fingerprint"]
        != (
            materialize(one_stage_pipeline("data_prep/sft_packing", DATA / "tiny_chat.jsonl"), store).provenance[
                "tokenizer"
            ]["chat_template_fingerprint"]
        )
    )


def test_provenance_records_what_made_the_artifact(fixtures_dir: Path, store: ArtifactStore):
    result = materialize(one_stage_pipeline("data_prep/sft_packing", DATA / "tiny_chat.jsonl"), store)
    p = result.provenance
    assert p["type"] == "packed_parquet" and p["step"]["id"] == "data_prep/sft_packing"
    assert p["params"]["tokenizer"] == str(fixtures_dir / "tiny-bpe")  # ${NEMOTRON_FIXTURES} expanded
    assert p["inputs"][0]["name"] == "data" and len(p["inputs"][0]["version"]) == 64
    assert p["tokenizer"]["fingerprint"] and p["tokenizer"]["vocab_size"] == 512
    assert p["profile"] == "local_cpu" and p["code"]["package"]
    assert p["timings"]["step_seconds"] >= 0 and "shards/shard_000000.parquet" in p["files"]


def test_versions_follow_content_not_location(fixtures_dir: Path, store: ArtifactStore, tmp_path: Path):
    original = materialize(one_stage_pipeline("data_prep/sft_packing", DATA / "tiny_chat.jsonl"), store)
    tokenizer = Path(shutil.copytree(fixtures_dir / "tiny-bpe", tmp_path / "elsewhere" / "tok"))
    data = Path(shutil.copy(DATA / "tiny_chat.jsonl", tmp_path / "elsewhere" / "chat.jsonl"))
    moved = materialize(one_stage_pipeline("data_prep/sft_packing", data, tokenizer=str(tokenizer)), store)
    assert (moved.version, moved.reused) == (original.version, True)


def test_code_versions_follow_the_source_and_libraries(store: ArtifactStore, tmp_path: Path, monkeypatch):
    """Editing a step's source (here a module its entry imports) gives a new code version and a re-run; another
    library's source does not; a library version is part of it."""
    step = CATALOG.step("data_prep/rl_prep")
    checkout = Path(shutil.copytree(PACKAGE_DIR, tmp_path / "nemotron_assets", ignore=shutil.ignore_patterns("*.pyc")))
    assert versions.code_version(step, checkout) == versions.step_code_version(step.id)
    (checkout / "steps" / "modelopt" / "common.py").write_text("# another library's step\n", "utf-8")
    assert versions.code_version(step, checkout) == versions.step_code_version(step.id)
    sharding = checkout / "steps" / "data_prep" / "sharding.py"
    sharding.write_text(sharding.read_text() + "\n# changed\n")
    edited = versions.code_version(step, checkout)
    assert edited != versions.step_code_version(step.id)
    assert "nemotron_assets.steps.data_prep.sharding" in versions.implementation(step.entry.split(":")[0])

    pipeline = one_stage_pipeline("data_prep/rl_prep", DATA / "tiny_dpo.jsonl", kind="dpo")
    first = materialize(pipeline, store)
    monkeypatch.setattr(execution, "step_code_version", lambda step_id: edited)
    rerun = materialize(pipeline, store)
    assert (rerun.reused, rerun.provenance["step"]["code_version"]) == (False, edited)
    assert rerun.version != first.version

    sft = CATALOG.step("data_prep/sft_packing")
    installed = versions.code_version(sft)
    monkeypatch.setattr(versions, "version", lambda name: "0.0.0-other" if name == "tokenizers" else "1")
    assert versions.library_versions(sft)["tokenizers"] == "0.0.0-other"
    assert versions.code_version(sft) != installed


def test_a_parse_racing_another_thread_is_retried_once(monkeypatch: pytest.MonkeyPatch):
    """CPython < 3.12 can fail an AST build that races another thread's (gh-106905): one retry, then the error."""
    real = versions.ast.parse

    def racing(failures: int):
        calls: list[bytes] = []

        def parse(source: bytes):
            calls.append(source)
            if len(calls) <= failures:
                raise SystemError("AST constructor recursion depth mismatch (before=141, after=73)")
            return real(source)

        return parse

    monkeypatch.setattr(versions.ast, "parse", racing(1))
    assert isinstance(versions.parse(b"import os").body[0], versions.ast.Import)
    monkeypatch.setattr(versions.ast, "parse", racing(2))
    with pytest.raises(SystemError, match="recursion depth mismatch"):
        versions.parse(b"import os")


def test_unchanged_files_are_not_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The stat-keyed cache: an unchanged file's digest comes from the cache (also after a rename, as publication
    does); a write, even one that restores size and mtime, reads it again; a file written just now is not cached."""
    (tmp_path / "staging").mkdir()
    data = tmp_path / "staging" / "data.bin"
    data.write_bytes(b"a" * 4096)
    time.sleep(2 * digests.RACY_NS / 1e9)
    first = digests.content_digest(data)
    reads = []
    real = digests.read_digest
    monkeypatch.setattr(digests, "read_digest", lambda path: reads.append(path) or real(path))
    moved = (tmp_path / "staging").rename(tmp_path / "published") / "data.bin"
    assert digests.content_digest(moved) == first and reads == []

    stat = moved.stat()
    moved.write_bytes(b"b" * 4096)
    os.utime(moved, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and mtime; the ctime moved on
    assert digests.content_digest(moved) != first and len(reads) == 1

    fresh = tmp_path / "fresh.bin"
    fresh.write_bytes(b"c")
    digests.content_digest(fresh)
    digests.content_digest(fresh)
    assert len(reads) == 3  # racy: modified within the timestamp granularity of its hashing, so never cached


def test_contract_verification_uses_the_cache_and_verifies_fully_on_request(
    fixtures_dir: Path, store: ArtifactStore, monkeypatch: pytest.MonkeyPatch
):
    result = materialize(one_stage_pipeline("data_prep/sft_packing", DATA / "tiny_chat.jsonl"), store)
    time.sleep(2 * digests.RACY_NS / 1e9)
    verify(result.path)  # reads (and caches) the settled files
    reads = []
    real = digests.read_digest
    monkeypatch.setattr(digests, "read_digest", lambda path: reads.append(path) or real(path))
    verify(result.path)
    assert reads == []
    verify(result.path, full=True)
    assert len(reads) == sum(not digest.startswith("link:") for digest in result.provenance["files"].values())


BUILD_FOREVER = """
import sys, time
from pathlib import Path
from resources.artifact_store import ArtifactStore

def build(staging):
    (staging / "shard.bin").write_bytes(b"x" * 1000)
    print("building", flush=True)
    time.sleep(600)

ArtifactStore(root=sys.argv[1]).publish(("t", "out"), "v1", build)
"""


def building_process(root: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", BUILD_FOREVER, str(root)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "building"
    return process


def test_staging_of_dead_runs_is_collected(store: ArtifactStore, monkeypatch: pytest.MonkeyPatch):
    """kill -9 during a build leaves its staging directory; the next build of the artifact and `store gc` remove
    it, never a live build's, never a published version, never a pointer being written."""
    dead = building_process(store.base)
    dead.kill()
    dead.wait()
    left = [p for p in published(store) if ".tmp-" in p]
    assert len(left) == 2  # its staging directory and lock
    live = building_process(store.base)  # its build collects the dead one's first
    try:
        assert len(staging := [p for p in published(store) if ".tmp-" in p]) == 2 and not set(staging) & set(left)
        store.publish(("t", "out"), "v2", lambda staging: (staging / "a").write_text("done"))
        assert len([p for p in published(store) if ".tmp-" in p]) == 2  # the live build's
        assert [p for p in published(store) if not p.startswith(".")] == ["CURRENT", "v2"]
    finally:
        live.kill()
        live.wait()
    artifact = store.artifact_dir(("t", "out"))
    (artifact / WORK / "v2").mkdir(parents=True)  # a published version's work directory
    (artifact / WORK / "v3").mkdir()  # an unfinished one's: kept, it resumes
    pointer = artifact / ".CURRENT.tmp-abcd1234"  # a pointer being written
    pointer.write_text("v3")
    monkeypatch.setenv("NEMOTRON_ARTIFACT_ROOT", str(store.base))
    assert cli.main(["store", "gc"]) == 0
    assert published(store) == [".CURRENT.tmp-abcd1234", ".work", "CURRENT", "v2"]
    assert sorted(p.name for p in (artifact / WORK).iterdir()) == ["v3"]
    monkeypatch.setattr(artifact_store, "SETTLE_SECONDS", 0)
    assert store.gc() == [pointer] and published(store) == [".work", "CURRENT", "v2"]


def test_wiring_parameters_are_not_part_of_a_version():
    """An evaluation's role, target, also_before, gate tolerance and timeout cannot change its scores: changing
    them reuses the evaluation; its limit can."""
    step = CATALOG.step("eval/model_eval")
    params = step.preset_values("tiny")
    base = execution.data_version(step, params, {})
    wiring = {"role": "after", "target": "lora", "also_before": "merged", "gate_tolerance": 0.5, "timeout_minutes": 1.0}
    assert {name for name in wiring if not step.parameter(name).versioned} == set(wiring)
    assert execution.data_version(step, params | wiring, {}) == base
    assert execution.data_version(step, params | {"limit": 3}, {}) != base


def test_a_launchpad_value_of_the_wrong_type_and_a_step_without_code_are_named(
    store: ArtifactStore, monkeypatch: pytest.MonkeyPatch
):
    pipeline = one_stage_pipeline("data_prep/sft_packing", DATA / "tiny_chat.jsonl")
    stage = pipeline.stage("out")
    params = pipeline.params(stage) | {"pack_size": "big"}  # run config reaches the stage after the YAML was parsed
    with pytest.raises(NamedError, match="invalid_parameter: t/out: parameter 'pack_size': 'big' input should be"):
        execution.stage_version(pipeline, stage, params, store)
    with pytest.raises(NamedError, match="invalid_parameter: t/out: parameter 'pack_sise': 512 extra inputs"):
        execution.stage_version(pipeline, stage, pipeline.params(stage) | {"pack_sise": 512}, store)
    step = CATALOG.step("data_prep/sft_packing")
    monkeypatch.setitem(CATALOG.steps, step.id, step.model_copy(update={"entry": None}))
    with pytest.raises(NamedError, match="step_not_runnable: t/out: data_prep/sft_packing"):
        execution.stage_version(pipeline, stage, pipeline.params(stage), store)
