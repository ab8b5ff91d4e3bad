"""translate/nemo_curator: NeMo Curator's TranslationStage against the fixture LLM and NMT services over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import materialize, one_stage_pipeline, published

from nemotron_assets.errors import NamedError
from nemotron_assets.fixtures.services import ServiceServer, serve, translate
from nemotron_assets.steps.curator import runtime
from resources.artifact_store import ArtifactStore

KEY_VARIABLE = "TRANSLATE_TEST_KEY"
SECRET = "sk-translate-test-secret"
CHAT = [
    [{"role": "user", "content": "What is the capital city?"}, {"role": "assistant", "content": "The capital is old."}],
    [{"role": "user", "content": "Which river is largest?"}, {"role": "assistant", "content": "The river Zorbla."}],
]
TEXTS = ["The old king and the queen.", "A new island in the north sea."]


@pytest.fixture(scope="module")
def server() -> Iterator[ServiceServer]:
    with serve(api_key=SECRET) as running:
        yield running


def write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def output(path: Path) -> list[dict]:
    return sorted(
        (json.loads(line) for f in path.glob("*.jsonl") for line in f.read_text().splitlines() if line.strip()),
        key=lambda r: r["id"],
    )


def llm_config(server: ServiceServer, **extra: object) -> dict:
    config = {
        "source_language": "en",
        "target_language": "fr",
        "server": {"url": f"{server.url}/v1", "model": "fixture", "api_key_env": KEY_VARIABLE},
    }
    return config | extra


def test_chat_messages_through_the_llm_with_faith(
    store: ArtifactStore, tmp_path: Path, server: ServiceServer, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(KEY_VARIABLE, SECRET)
    data = write(tmp_path / "chat.jsonl", [{"id": i, "messages": m} for i, m in enumerate(CHAT)])
    config = llm_config(server, **{"faith_eval.threshold": 4.5})
    result = materialize(one_stage_pipeline("translate/nemo_curator", data, **config), store, cpus=2)
    rows = output(result.path)
    # the second conversation has an untranslatable name (Zorbla): FAITH scores that turn 3, the row 4 < 4.5
    assert [r["id"] for r in rows] == [0]
    row = rows[0]
    translated = [{"role": m["role"], "content": translate(m["content"], "en", "fr")} for m in CHAT[0]]
    assert translated[0]["content"] == "Quel est le capitale ville?"
    # output_mode both: the chat is rebuilt in the target language, the source segments kept in the metadata
    assert row["messages"] == row["translated_messages"] == translated
    segments = row["translation_metadata"]["segmented_translation"]["content"]
    assert [(s["src"], s["tgt"]) for s in segments] == [
        (m["content"], t["content"]) for m, t in zip(CHAT[0], translated, strict=True)
    ]
    assert [s["Accuracy"] for s in row["faith_segment_scores"]] == [5.0, 5.0]
    assert row["faith_avg"] == 5.0
    assert result.stats == {
        "input_records": 2, "output_records": 1, "faith_dropped": 1, "faith_mean": 5.0, "executor": "in_process"
    }  # fmt: skip
    assert server.requests["/v1/chat/completions"] >= 8  # 4 turns translated + 4 judged (+ the endpoint check)
    stored = "".join(p.read_text() for p in result.path.rglob("*") if p.is_file())
    assert SECRET not in stored and KEY_VARIABLE in stored  # the variable is named, its value never written


def test_plain_text_through_nmt_replaced(store: ArtifactStore, tmp_path: Path, server: ServiceServer):
    data = write(tmp_path / "text.jsonl", [{"id": i, "text": t} for i, t in enumerate(TEXTS)])
    config = {
        "source_language": "en",
        "target_language": "fr",
        "text_field": "text",
        "backend": "nmt",
        "nmt": {"server_url": server.url, "batch_size": 8, "timeout": 30, "max_concurrent_requests": 2},
        "faith_eval.enabled": False,
        "output_mode": "replaced",
        "executor": "ray",  # the in-process executor runs the LLM test above
    }
    result = materialize(one_stage_pipeline("translate/nemo_curator", data, **config), store, cpus=2)
    rows = output(result.path)
    assert [r["text"] for r in rows] == [translate(t, "en", "fr") for t in TEXTS]
    assert rows[0]["text"] == "Le vieux roi et le reine."
    assert server.requests["/translate"] >= 1 and result.stats["faith_dropped"] == 0
    assert result.stats["executor"] == "ray"


def test_backend_errors_are_a_named_error(store: ArtifactStore, tmp_path: Path, server: ServiceServer):
    data = write(tmp_path / "text.jsonl", [{"id": i, "text": t} for i, t in enumerate(TEXTS)])
    config = {  # the fixture translates en -> fr only: every request for de is answered 400
        "source_language": "en",
        "target_language": "de",
        "text_field": "text",
        "backend": "nmt",
        "nmt": {"server_url": server.url, "batch_size": 8, "timeout": 30, "max_concurrent_requests": 2},
        "faith_eval.enabled": False,
    }
    with pytest.raises(NamedError, match="translation_failed: 2 of 2 rows") as raised:
        materialize(one_stage_pipeline("translate/nemo_curator", data, **config), store, cpus=2)
    assert "translation_errors say why" in raised.value.recovery and published(store) == []


@pytest.mark.parametrize(
    ("config", "error", "recovery"),
    [
        ({"target_language": None}, "missing_language_codes", "they have no defaults"),
        ({"server": {"url": "http://127.0.0.1:9/v1", "model": "x"}}, "missing_llm_endpoint", "reachable"),
        ({"server": {"url": "U", "model": "x", "api_key_env": "UNSET_KEY_VARIABLE"}}, "missing_llm_endpoint", "export"),
        ({"backend": "nmt", "faith_eval.enabled": False, "nmt": {"server_url": "http://127.0.0.1:9"}},
         "missing_nmt_server", "GET /health"),
        ({"backend": "google", "faith_eval.enabled": False}, "missing_cloud_credentials", "Google project"),
        ({"text_field": "text"}, "field_path_mismatch", "messages.*.content"),
    ],
)  # fmt: skip
def test_configuration_errors(store: ArtifactStore, tmp_path: Path, config: dict, error: str, recovery: str):
    data = write(tmp_path / "chat.jsonl", [{"id": i, "messages": m} for i, m in enumerate(CHAT)])
    base = {"source_language": "en", "target_language": "fr", "server": {"url": "http://127.0.0.1:9/v1", "model": "x"}}
    with pytest.raises(NamedError, match=error) as raised:
        materialize(one_stage_pipeline("translate/nemo_curator", data, **(base | config)), store)
    assert recovery in raised.value.recovery
    assert published(store) == []


def test_a_file_too_large_for_the_memory_is_a_named_error_before_ray(
    store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    data = write(tmp_path / "chat.jsonl", [{"id": i, "messages": m} for i, m in enumerate(CHAT)])
    monkeypatch.setattr(runtime, "available_memory", lambda: data.stat().st_size * runtime.READ_EXPANSION - 1)
    config = {"source_language": "en", "target_language": "fr"}  # no endpoint: the check comes first
    with pytest.raises(NamedError, match="single_huge_file_memory_pressure: .*chat.jsonl is") as raised:
        materialize(one_stage_pipeline("translate/nemo_curator", data, **config), store)
    assert "split it into smaller JSONL shards" in raised.value.recovery and published(store) == []


def test_same_version_same_bytes_from_another_location(
    tmp_path: Path, server: ServiceServer, monkeypatch: pytest.MonkeyPatch
):
    """The same input read from two places into two stores: one version, the same files byte for byte (shards
    named by content, not by the input's path; no per-row wall-clock time in the records)."""
    monkeypatch.setenv(KEY_VARIABLE, SECRET)
    results = []
    for place in ("a", "b"):
        (tmp_path / place).mkdir()
        data = write(tmp_path / place / "docs.jsonl", [{"id": i, "text": t} for i, t in enumerate(TEXTS)])
        pipeline = one_stage_pipeline("translate/nemo_curator", data, **llm_config(server, text_field="text"))
        results.append(materialize(pipeline, ArtifactStore(root=str(tmp_path / place / "store")), cpus=2))
    first, second = results
    assert first.version == second.version and not first.reused and not second.reused
    assert first.provenance["files"] == second.provenance["files"]
    assert all(f.startswith("part-") for f in first.provenance["files"])
    assert not any("translation_time" in row for row in output(first.path))
