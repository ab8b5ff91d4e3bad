"""The JSONL family: record shapes (text, chat, DPO, RLVR), streaming validation, and the contracts."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from nemotron_assets.artifacts.files import data_files
from nemotron_assets.errors import contract_error

CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
PROMPT_FIELDS = ("prompt", "messages", "question", "problem", "input")
VERIFIER_FIELDS = ("answer", "ground_truth", "tests", "env_metadata", "reward_model")
SCORE_FIELDS = (("chosen_score", "rejected_score"), ("score_chosen", "score_rejected"))

TRAINING_SHAPES = frozenset({"chat", "dpo", "rlvr"})
# The error a record of the wrong shape gets, by the first shape the consumer accepts in this order.
_SHAPE_ERRORS = (
    ("chat", "missing_messages"),
    ("text", "missing_text_field"),
    ("rlvr", "missing_rlvr_verifier_fields"),
    ("dpo", "invalid_dpo_preference_schema"),
)
CORPUS_SHAPES = frozenset({"text", "chat", "dpo", "rlvr"})


def iter_lines(paths: Iterable[Path], start: tuple[int, int, int] = (0, 0, 1)) -> Iterator[tuple[str, bytes]]:
    """(`file:line`, raw line) for every non-blank line, from `start`: (file index, byte offset, its line number)."""
    first, offset, first_line = start
    for path in islice(paths, first, None):
        with path.open("rb") as f:
            f.seek(offset)
            for lineno, line in enumerate(f, first_line):
                if line.strip():
                    yield f"{path}:{lineno}", line
        offset, first_line = 0, 1


def parse_line(where: str, line: bytes) -> dict[str, Any]:
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise contract_error("malformed_jsonl", f"{where}: not UTF-8 at byte {e.start}") from None
    except json.JSONDecodeError as e:
        raise contract_error("malformed_jsonl", f"{where}: {e.msg} at column {e.colno}") from None
    except RecursionError:
        raise contract_error("malformed_jsonl", f"{where}: nested deeper than a JSON parser accepts") from None
    if not isinstance(record, dict):
        raise contract_error("malformed_jsonl", f"{where}: a line must be a JSON object, got {type(record).__name__}")
    return record


def record_shape(record: dict[str, Any], text_field: str = "text") -> str | None:
    """Which shape a record claims: dpo, rlvr, chat, text, or None."""
    if "chosen" in record or "rejected" in record:
        return "dpo"
    if any(f in record for f in VERIFIER_FIELDS):
        return "rlvr"
    if "messages" in record:
        return "chat"
    if text_field in record:
        return "text"
    return None


def check_messages(messages: Any, where: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise contract_error("missing_messages", f"{where}: `messages` must be a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise contract_error("missing_messages", f"{where}: messages[{i}] is not an object")
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise contract_error("invalid_role", f"{where}: messages[{i}].role = {role!r}")
        content = message.get("content")
        if not (isinstance(content, str) or (content is None and message.get("tool_calls"))):
            raise contract_error("invalid_role", f"{where}: messages[{i}].content must be a string")


def _non_empty(value: Any) -> bool:
    return (isinstance(value, str) and bool(value.strip())) or (isinstance(value, list) and bool(value))


def check_dpo(record: dict[str, Any], where: str) -> None:
    for field in ("prompt", "chosen", "rejected"):
        if not _non_empty(record.get(field)):
            raise contract_error("invalid_dpo_preference_schema", f"{where}: `{field}` missing or empty")
    if record["chosen"] == record["rejected"]:
        raise contract_error("invalid_dpo_preference_schema", f"{where}: chosen equals rejected")
    for chosen_key, rejected_key in SCORE_FIELDS:
        if chosen_key not in record or rejected_key not in record:
            continue
        if not all(
            isinstance(record[k], int | float) and not isinstance(record[k], bool) for k in (chosen_key, rejected_key)
        ):
            raise contract_error(
                "invalid_dpo_preference_schema", f"{where}: {chosen_key}/{rejected_key} must be numbers"
            )
        if record[chosen_key] < record[rejected_key]:
            raise contract_error(
                "invalid_dpo_preference_schema",
                f"{where}: inverted pair, {chosen_key}={record[chosen_key]} < {rejected_key}={record[rejected_key]}",
            )


def check_rlvr(record: dict[str, Any], where: str) -> None:
    if not any(_non_empty(record.get(f)) for f in PROMPT_FIELDS):
        raise contract_error("missing_rlvr_verifier_fields", f"{where}: no prompt field ({', '.join(PROMPT_FIELDS)})")
    if not any(record.get(f) not in (None, "", [], {}) for f in VERIFIER_FIELDS):
        raise contract_error(
            "missing_rlvr_verifier_fields", f"{where}: no verifier field ({', '.join(VERIFIER_FIELDS)})"
        )
    if "messages" in record:
        check_messages(record["messages"], where)


def check_text(record: dict[str, Any], where: str, text_field: str) -> None:
    if not isinstance(record.get(text_field), str) or not record[text_field].strip():
        raise contract_error("missing_text_field", f"{where}: `{text_field}` missing or empty")


def check_record(record: dict[str, Any], where: str, shapes: frozenset[str], text_field: str = "text") -> str:
    """Validate one record against the allowed shapes; return its shape."""
    shape = record_shape(record, text_field)
    if shape not in shapes:
        error = next(name for wanted, name in _SHAPE_ERRORS if wanted in shapes)
        raise contract_error(
            error, f"{where}: expected a {'/'.join(sorted(shapes))} record, got fields {sorted(record)[:8]}"
        )
    if shape == "chat":
        check_messages(record["messages"], where)
    elif shape == "dpo":
        check_dpo(record, where)
    elif shape == "rlvr":
        check_rlvr(record, where)
    else:
        check_text(record, where, text_field)
    return shape


class RecordStream:
    """Streams validated records of one shape from JSONL files; counts what it saw."""

    def __init__(
        self, files: list[Path], shapes: frozenset[str], text_field: str = "text", max_rows: int | None = None
    ):
        self.files, self.shapes, self.text_field, self.max_rows = files, shapes, text_field, max_rows
        self.shape: str | None = None
        self.records = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.from_lines(iter_lines(self.files))

    def from_lines(self, lines: Iterable[tuple[str, bytes]]) -> Iterator[dict[str, Any]]:
        """Validate and yield records from (where, line) pairs, e.g. one shard's byte range."""
        for where, line in lines:
            if self.max_rows is not None and self.records >= self.max_rows:
                return
            record = parse_line(where, line)
            shape = check_record(record, where, self.shapes, self.text_field)
            if self.shape is None:
                self.shape = shape
            elif shape != self.shape:
                raise contract_error("mixed_record_shapes", f"{where}: {shape} record after {self.shape} records")
            self.records += 1
            yield record


def require_assistant_turns(files: list[Path]) -> None:
    """SFT learns only assistant tokens: no_assistant_turn for a chat record without an assistant message with
    content (valid training_jsonl, e.g. an RLHF prompt, but nothing to fine-tune on)."""
    for where, line in iter_lines(files):
        messages = parse_line(where, line).get("messages")
        replies = [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else None
        if replies is not None and not any(m.get("role") == "assistant" and m.get("content") for m in replies):
            raise contract_error("no_assistant_turn", f"{where}: no assistant message with content")


def validate_jsonl(path: Path, shapes: frozenset[str], text_field: str = "text") -> dict[str, Any]:
    """Contract of a JSONL artifact: every record parses and has one allowed shape."""
    files = data_files(path, (".jsonl",))
    stream = RecordStream(files, shapes, text_field)
    for _ in stream:
        pass
    if stream.records == 0:
        raise contract_error("empty_artifact", f"{path}: no records")
    return {"files": len(files), "records": stream.records, "shape": stream.shape}
