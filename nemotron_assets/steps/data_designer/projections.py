"""The sdg/data_designer output projections: generated Data Designer rows -> the record shape a consumer trains on.

openai_messages: {messages: [user, assistant], <metadata>}; structured_messages: {messages, tools} from a JSON column
(tool-call arguments and tool results as compact JSON strings); dpo_preference: {prompt, chosen, rejected} picked by
a judge's A/B winner. A row that does not fit raises ProjectionMismatch naming the column.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

USER, ASSISTANT = "user_query", "assistant_response"
CONVERSATION = "conversation"
PROMPT, RESPONSE_A, RESPONSE_B, JUDGE = "prompt", "response_a", "response_b", "judge"


class ProjectionMismatch(ValueError):
    """A generated row lacks what its projection needs."""


def text(row: dict[str, Any], column: str) -> str:
    value = row.get(column)
    if not isinstance(value, str) or not value.strip():
        raise ProjectionMismatch(f"column {column!r} is missing or empty (columns: {sorted(row)})")
    return value


def openai_messages(row: dict[str, Any], metadata: list[str]) -> dict[str, Any]:
    messages = [{"role": "user", "content": text(row, USER)}, {"role": "assistant", "content": text(row, ASSISTANT)}]
    return {"messages": messages} | {k: row[k] for k in metadata if k in row}


def parsed_json(value: Any, column: str) -> dict[str, Any]:
    """A JSON object from a column: already parsed, a bare string, or inside a ```json fence."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        fenced = re.search(r"```(?:json)?\s*([\s\S]*?)```", value)
        try:
            parsed = json.loads(fenced.group(1) if fenced else value)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            return parsed
    raise ProjectionMismatch(f"column {column!r} is not a JSON object")


def compact(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def structured_messages(row: dict[str, Any], metadata: list[str]) -> dict[str, Any]:
    source = parsed_json(row.get(CONVERSATION), CONVERSATION)
    messages = source.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ProjectionMismatch(f"column {CONVERSATION!r} has no messages list")
    for message in messages:
        for call in message.get("tool_calls") or []:
            call["function"]["arguments"] = compact(call["function"].get("arguments", {}))
        if message.get("role") == "tool":
            message["content"] = compact(message.get("content"))
    record = {"messages": messages} | ({"tools": source["tools"]} if source.get("tools") else {})
    return record | {k: row[k] for k in metadata if k in row}


def winner(judge: Any) -> str:
    """The A/B verdict: {"winner": "A"} or Data Designer's judge shape {"winner": {"score": "A", ...}}."""
    verdict = parsed_json(judge, JUDGE).get("winner")
    verdict = verdict.get("score") if isinstance(verdict, dict) else verdict
    if verdict not in ("A", "B"):
        raise ProjectionMismatch(f"judge winner is {verdict!r}, not A or B")
    return verdict


def dpo_preference(row: dict[str, Any], metadata: list[str]) -> dict[str, Any]:
    a, b = text(row, RESPONSE_A), text(row, RESPONSE_B)
    chosen, rejected = (a, b) if winner(row.get(JUDGE)) == "A" else (b, a)
    return {"prompt": text(row, PROMPT), "chosen": chosen, "rejected": rejected} | {
        k: row[k] for k in metadata if k in row
    }


PROJECTIONS: dict[str, Callable[[dict[str, Any], list[str]], dict[str, Any]]] = {
    "openai_messages": openai_messages,
    "structured_messages": structured_messages,
    "dpo_preference": dpo_preference,
}
