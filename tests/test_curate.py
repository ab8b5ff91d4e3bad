"""curate/nemo_curator: the real NeMo Curator pipeline, on Ray and in process, checked against the records it should
keep; which executor a run gets."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import psutil
import pytest
from helpers import materialize, one_stage_pipeline, published
from nemo_curator.stages.resources import Resources

from nemotron_assets.errors import NamedError
from nemotron_assets.steps import ray_cluster
from nemotron_assets.steps.curator import runtime
from resources.artifact_store import ArtifactStore

ENGLISH = ["the cat sat on the mat today", "we went to the market in the morning", "she reads a book every night"]
FRENCH = ["le chat est sur la table ce soir", "nous allons au marché le matin", "elle lit un livre chaque nuit"]


def write_langid_model(path: Path, vocabulary: dict[str, list[str]]) -> None:
    """A real fastText supervised model file (format v12), one input dimension per language, written directly.

    This machine's fastText build diverges to NaN when training on tiny data, so the weights are set by hand:
    a word votes for its language, and softmax turns the averaged votes into the language score."""
    words = [w for ws in vocabulary.values() for w in ws] + ["</s>"]
    labels = [f"__label__{code}" for code in vocabulary]
    inputs = np.zeros((len(words), len(labels)), np.float32)
    for column, vocabulary_words in enumerate(vocabulary.values()):
        inputs[[words.index(w) for w in vocabulary_words], column] = 1.0
    outputs = np.eye(len(labels), dtype=np.float32) * 8
    with path.open("wb") as f:
        f.write(struct.pack("<ii", 793712314, 12))  # magic, version
        # dim ws epoch minCount neg wordNgrams loss=softmax model=supervised bucket minn maxn lrUpdateRate t
        f.write(struct.pack("<12id", len(labels), 5, 1, 1, 5, 1, 3, 3, 0, 0, 0, 100, 1e-4))
        f.write(struct.pack("<iiiqq", len(words) + len(labels), len(words), len(labels), 1000, -1))
        for entry, kind in [(w, 0) for w in words] + [(label, 1) for label in labels]:
            f.write(entry.encode() + b"\0" + struct.pack("<qb", 10, kind))
        for matrix in (inputs, outputs):
            f.write(struct.pack("<?qq", False, *matrix.shape) + matrix.tobytes())


@pytest.fixture(scope="module")
def langid_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An EN/FR language-id model standing in for lid.176.bin."""
    path = tmp_path_factory.mktemp("langid") / "lid.bin"
    write_langid_model(path, {"EN": " ".join(ENGLISH).split(), "FR": " ".join(FRENCH).split()})
    return path


def corpus(directory: Path) -> list[dict]:
    """Chat records carrying a text field: English and French, short and long."""
    records = []
    for i, text in enumerate(ENGLISH + FRENCH):
        for repeat in (1, 3):
            body = " ".join([text] * repeat)
            messages = [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": body}]
            records.append({"id": f"{i}-{repeat}", "text": body, "messages": messages})
    directory.mkdir(parents=True)
    (directory / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:6]))
    (directory / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[6:]))
    (directory / "notes.txt").write_text("not read: input_glob picks *.jsonl")
    return records


def output_records(path: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(path.glob("*.jsonl")) for line in f.read_text().splitlines()]


def ray_children() -> list[str]:
    return [p.name() for p in psutil.Process().children(recursive=True) if "ray" in " ".join(p.cmdline()).lower()]


@pytest.fixture(autouse=True)
def local_ray_stopped():
    """Each test starts without this process's local Ray head and stops the one it started."""
    yield
    ray_cluster.stop_local()


@pytest.fixture(scope="module")
def curated(tmp_path_factory: pytest.TempPathFactory, langid_model: Path):
    """The same pipeline run by each executor: its records and, for Ray, whether the local head outlived the step."""

    def curate(executor: str):
        root = tmp_path_factory.mktemp(executor)
        records = corpus(root / "raw")
        pipeline = one_stage_pipeline(
            "curate/nemo_curator",
            root / "raw",
            language_codes=["EN"],
            models={"fasttext_langid": str(langid_model)},
            quality_filters={"min_langid_score": 0.5, "min_words": 5, "max_words": 12},
            executor=executor,
            **{"ray.num_cpus": 2},
        )
        result = materialize(pipeline, ArtifactStore(root=str(root / "store")))
        head_kept = ray_cluster._local.get("cpus") == 2 and bool(ray_children())
        ray_cluster.stop_local()
        return records, result, head_kept

    return {executor: curate(executor) for executor in ("ray", "in_process")}


@pytest.mark.parametrize("executor", ["ray", "in_process"])
def test_language_and_word_filters_keep_whole_records(curated, executor: str):
    records, result, _ = curated[executor]
    kept = output_records(result.path)
    expected = [r for r in records if r["text"] in ENGLISH]  # English and at most 12 words: the single copies
    assert sorted(r["id"] for r in kept) == sorted(r["id"] for r in expected)
    by_id = {r["id"]: r for r in kept}
    for record in expected:  # whole records: every input field survives, messages included
        assert {k: by_id[record["id"]][k] for k in record} == record
        assert json.loads(by_id[record["id"]]["language"].replace("'", '"'))[1] == "EN"
    assert result.stats == {
        "files": 2, "executor": executor, "shards": 1, "input_records": 12, "kept_records": 3,
        "language_kept": 6, "language_dropped": 6, "word_count_kept": 3, "word_count_dropped": 3,
    }  # fmt: skip
    assert result.provenance["contract"]["records"] == 3


def test_both_executors_write_the_same_artifact_under_one_version(curated):
    (_, on_ray, _), (_, in_process, _) = curated["ray"], curated["in_process"]
    assert {f.name: f.read_bytes() for f in on_ray.path.glob("*.jsonl")} == {
        f.name: f.read_bytes() for f in in_process.path.glob("*.jsonl")
    }
    assert on_ray.version == in_process.version  # the executor is not part of the data version


def test_the_local_ray_head_outlives_a_step_and_stops_cleanly(curated):
    assert curated["ray"][2]  # the head the Ray step started was still up after it, for the next Ray step
    psutil.wait_procs(psutil.Process().children(recursive=True), timeout=30)
    assert ray_children() == []  # and stop_local stopped it


def stage(gpus: float = 0) -> SimpleNamespace:
    return SimpleNamespace(resources=Resources(gpus=gpus))


@pytest.mark.parametrize(
    ("asked", "cpus", "address", "gpus", "size", "chosen"),
    [
        ("auto", 2, None, 0, 10, "in_process"),
        ("auto", None, None, 0, 10, "in_process"),
        ("auto", 2, None, 0, 10**6, "in_process"),  # two CPUs: Ray Data keeps one for itself
        ("auto", 16, None, 0, 10**6, "ray"),  # more CPUs and an input over IN_PROCESS_BYTES
        ("auto", 16, None, 0, 10, "in_process"),
        ("auto", 2, "ray://head:10001", 0, 10, "ray"),  # the profile's cluster
        ("auto", 2, None, 1, 10, "ray"),  # a GPU stage
        ("ray", 2, None, 0, 10, "ray"),
        ("in_process", 16, "ray://head:10001", 0, 10**6, "in_process"),
    ],
)
def test_executor_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, asked, cpus, address, gpus, size, chosen):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(runtime, "IN_PROCESS_BYTES", 1000)
    data = tmp_path / "a.jsonl"
    data.write_bytes(b"x" * size)
    run = SimpleNamespace(cpus=cpus, ray_address=address)
    assert runtime.choose_executor(run, [stage(), stage(gpus)], [data], asked) == chosen


def test_nothing_kept_is_a_named_error_and_publishes_nothing(store: ArtifactStore, tmp_path: Path):
    corpus(tmp_path / "raw")
    pipeline = one_stage_pipeline(
        "curate/nemo_curator", tmp_path / "raw", quality_filters={"min_words": 500, "max_words": 900}
    )
    with pytest.raises(NamedError, match="empty_or_tiny_output") as error:
        materialize(pipeline, store)
    assert "lower min_langid_score or min_words" in error.value.recovery
    assert published(store) == []


@pytest.mark.parametrize(
    ("config", "error", "recovery"),
    [
        ({"quality_filters": {"min_words": 5}}, "incomplete_word_filter", "Give both min_words and max_words"),
        ({"language_codes": ["EN"], "models": {}}, "missing_language_model", "set language_codes = []"),
        ({"input_glob": "*.parquet"}, "input_glob_no_matches", "give a pattern that resolves"),
        ({"text_field": "body"}, "missing_text_field", "set text_field to the column"),
        ({"domains": ["Sports"], "models": {"hf_cache_dir": "/nonexistent"}}, "missing_domain_model", "domains = []"),
        ({"ray.num_cpus": 64, "executor": "ray"}, "not_enough_cpu_resources", "set ray.num_cpus between 2"),
        ({"ray.num_cpus": 1, "executor": "ray"}, "not_enough_cpu_resources", "run on a profile with more CPU"),
    ],
)
def test_configuration_errors(store: ArtifactStore, tmp_path: Path, config: dict, error: str, recovery: str):
    corpus(tmp_path / "raw")
    with pytest.raises(NamedError, match=error) as raised:
        materialize(one_stage_pipeline("curate/nemo_curator", tmp_path / "raw", **config), store, cpus=2)
    assert recovery in raised.value.recovery
    assert published(store) == []


def test_a_file_too_large_for_the_memory_is_a_named_error_before_ray(
    store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    corpus(tmp_path / "raw")
    largest = max((tmp_path / "raw").glob("*.jsonl"), key=lambda p: p.stat().st_size)
    monkeypatch.setattr(runtime, "available_memory", lambda: largest.stat().st_size * runtime.READ_EXPANSION - 1)
    with pytest.raises(NamedError, match=f"large_file_oom: {re.escape(str(largest))} is") as raised:
        materialize(one_stage_pipeline("curate/nemo_curator", tmp_path / "raw"), store, cpus=2)
    assert "split it into smaller JSONL files" in raised.value.recovery
    assert published(store) == [] and ray_children() == []
