"""sdg/data_designer: NeMo Data Designer against the fixture OpenAI-compatible service, the three projections."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import materialize, published

from nemotron_assets.errors import NamedError
from nemotron_assets.fixtures.services import ServiceServer
from nemotron_assets.pipelines import PipelineSpec
from resources.artifact_store import ArtifactStore


def sdg_pipeline(preset: str, **config: Any) -> PipelineSpec:
    stage = {"name": "out", "step": "sdg/data_designer", "consumes": {}, "preset": preset, "config": config}
    return PipelineSpec.parse({"name": "t", "description": "test", "sources": [], "stages": [stage]})


def seeds(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def local(server: ServiceServer) -> dict:
    return {"providers": {"local": {"endpoint": f"{server.url}/v1"}}, "models.provider": "local"}


def records(path: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (path / f"{name}.jsonl").read_text().splitlines()]


def test_openai_messages_from_seeds(store: ArtifactStore, tmp_path: Path, server: ServiceServer):
    seed_path = seeds(tmp_path / "topics.jsonl", [{"topic": "rivers"}, {"topic": "mountains"}])
    config = local(server) | {"seed_dataset.path": seed_path, "seed_dataset.strategy": "ordered"}
    result = materialize(sdg_pipeline("tiny", **config), store)
    rows = records(result.path, "openai_messages")
    assert len(rows) == 4 and result.stats["records"] == 4
    for row in rows:
        user, assistant = row["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        # the fixture answers "Reply <digest>: <last prompt line>": the prompts rendered the seed and sampler columns
        assert user["content"].endswith(f"As a {row['persona']}, ask one short question about {row['topic']}.")
        assert assistant["content"].endswith(f"Answer briefly: {user['content']}")
    assert {row["topic"] for row in rows} == {"rivers", "mountains"}
    saved = json.loads((result.path / "sdg_config.json").read_text())  # provenance versioned with the rows
    assert saved["model"] == "fixture-generator" and saved["seeds"]["path"] == seed_path
    prompts = {c["name"]: c.get("prompt") for c in saved["data_designer_config"]["data_designer"]["columns"]}
    assert prompts["assistant_response"] == "Answer briefly: {{ user_query }}"
    assert result.provenance["contract"] == {"type": "synthetic_jsonl", "files": 1, "records": 4, "shape": "chat"}


def test_structured_messages_for_tool_use(store: ArtifactStore, tmp_path: Path, server: ServiceServer):
    seed_path = seeds(tmp_path / "cases.jsonl", [{"customer_name": "Ada", "issue": "a late parcel"}])
    config = local(server) | {"seed_dataset.path": seed_path, "num_records": 2, "models.model": "fixture"}
    result = materialize(sdg_pipeline("customer_support_tools", **config), store)
    rows = records(result.path, "structured_messages")
    assert len(rows) == 2
    assert all(m["role"] in ("user", "assistant") and isinstance(m["content"], str) for m in rows[0]["messages"])
    assert rows[0]["tools"][0]["type"] == "function" and rows[0]["customer_name"] == "Ada"


def test_dpo_preference_follows_the_judge(store: ArtifactStore, tmp_path: Path, server: ServiceServer):
    seed_path = seeds(tmp_path / "prompts.jsonl", [{"prompt": "Name a river."}, {"prompt": "Name a mountain."}])
    config = local(server) | {"seed_dataset.path": seed_path, "num_records": 2, "models.model": "fixture"}
    result = materialize(sdg_pipeline("rl_pref", **config), store)
    rows = records(result.path, "dpo_preference")
    assert {r["prompt"] for r in rows} == {"Name a river.", "Name a mountain."}
    for row in rows:
        winner = row["judge"]["winner"]["score"]
        chosen_prompt = "" if winner == "A" else "Answer concisely: "
        assert row["chosen"].endswith(f": {chosen_prompt}{row['prompt']}") and row["chosen"] != row["rejected"]
    assert result.provenance["contract"]["shape"] == "dpo"


@pytest.mark.parametrize(
    ("config", "error", "recovery"),
    [
        ({"models.provider": "elsewhere"}, "unknown_model_provider", "add the provider"),
        ({"providers": {"local": {"endpoint": "http://x/v1", "api_key": "sk-123secret"}}},
         "provider_secret_resolved_into_yaml", "rotate"),
        ({"columns": {"user_query": {"type": "llm_text", "prompt": "Ask about {{ topic }}."}}},
         "projection_schema_mismatch", "user and assistant columns"),
        ({"providers": {"local": {"endpoint": "http://127.0.0.1:9/v1"}}}, "generation_failed", "provider endpoint"),
        ({"columns": {"user_query": {"type": "llm_txt", "prompt": "Ask."}}}, "invalid_column", "llm_text prompt"),
        ({"columns": {"user_query": {"type": "llm_text"}}}, "invalid_column", "llm_text prompt"),
        ({"columns": {"user_query": {"type": "category", "values": "rivers"}}}, "invalid_column", "category values"),
    ],
)  # fmt: skip
def test_errors(store: ArtifactStore, tmp_path: Path, server: ServiceServer, config: dict, error: str, recovery: str):
    seed_path = seeds(tmp_path / "topics.jsonl", [{"topic": "rivers"}])
    full = local(server) | {"seed_dataset.path": seed_path} | config
    with pytest.raises(NamedError, match=error) as raised:
        materialize(sdg_pipeline("tiny", **full), store)
    assert recovery in raised.value.recovery
    assert published(store) == []
