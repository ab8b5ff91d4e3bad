"""Chat templates rendered the way transformers renders them, split into trainable and context segments.

Templates with `{% generation %}` blocks give the assistant spans in one render. Other templates are split by
rendering growing prefixes of the conversation (each assistant turn = prefix-with-reply minus
prefix-with-generation-prompt), which needs the template to be prefix-stable. That costs 1 + 2 x turns renders,
so it is done once per role sequence on a probe conversation with placeholder contents, which yields the
template's fixed text ("glue") around each message and where each reply starts and ends within it. A real
conversation then needs one render: if it equals the glue interleaved with its contents, the probe's spans
apply; otherwise (content-dependent templates, tool calls) its own prefixes are rendered.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from nemotron_assets.paths import PACKAGE_DIR

BUNDLED_DIR = PACKAGE_DIR / "templates"
# What a template's strftime_now() renders (Llama 3's "Today Date"): one fixed day, the one Llama 3.1's template
# falls back to itself, so that rendered and packed data never depend on the day they were made.
TEMPLATE_DATE = datetime(2024, 7, 26)
GEN_OPEN, GEN_CLOSE = "\ue000", "\ue001"
_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")
_SPLIT = re.compile(f"([{GEN_OPEN}{GEN_CLOSE}])")
_PROBE = "\ue002"  # brackets the placeholder contents of layout probes


class TemplateError(ValueError):
    """The template cannot mark assistant turns for this conversation."""


class _GenerationBlock(Extension):
    """`{% generation %}...{% endgeneration %}` wraps its output in private-use sentinels."""

    tags = {"generation"}

    def parse(self, parser):
        next(parser.stream)
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return [nodes.Output([nodes.TemplateData(GEN_OPEN)]), *body, nodes.Output([nodes.TemplateData(GEN_CLOSE)])]


def _raise(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys=False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: TEMPLATE_DATE.strftime(fmt)
    return env


class ChatTemplate:
    """A compiled chat template plus the special tokens it may reference."""

    def __init__(self, source: str, special_tokens: dict[str, str] | None = None):
        self.source = source
        self.marked = bool(_MARKER.search(source))
        self.fingerprint = hashlib.sha256(source.encode()).hexdigest()
        self._template = _environment().from_string(source)
        self._context = dict(special_tokens or {})
        self._layouts: dict[tuple[str, ...], tuple[list[str], dict[int, tuple[int, int]]] | None] = {}

    def _render(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt, **self._context)

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
        """The conversation as text, exactly as the model sees it."""
        return self._render(messages, add_generation_prompt).replace(GEN_OPEN, "").replace(GEN_CLOSE, "")

    def segments(self, messages: list[dict[str, Any]]) -> list[tuple[str, bool]]:
        """The rendered conversation as consecutive (text, is_assistant) pieces."""
        if self.marked:
            pieces = self._marked_segments(messages)
        else:
            full = self.render(messages)
            spans = self._layout_spans(messages, full)
            pieces = _pieces(full, self._prefix_spans(messages, full) if spans is None else spans)
        if not pieces:
            raise TemplateError("the conversation renders to nothing")
        return pieces

    def _marked_segments(self, messages: list[dict[str, Any]]) -> list[tuple[str, bool]]:
        pieces, trainable = [], False
        for part in _SPLIT.split(self._render(messages, False)):
            if part in (GEN_OPEN, GEN_CLOSE):
                trainable = part == GEN_OPEN
            elif part:
                pieces.append((part, trainable))
        return pieces

    def _prefix_spans(self, messages: list[dict[str, Any]], full: str) -> list[tuple[int, int]]:
        """(start, end) of each assistant turn in `full`, from renders of growing prefixes."""
        spans, done = [], 0
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self.render(messages[:i], add_generation_prompt=True) if i else ""
            with_reply = full if i == len(messages) - 1 else self.render(messages[: i + 1])
            if not (full.startswith(with_reply) and with_reply.startswith(prompt) and len(prompt) >= done):
                raise TemplateError("template renders are not prefix-stable; use one with {% generation %} markers")
            spans.append((len(prompt), len(with_reply)))
            done = len(with_reply)
        return spans

    def _layout_spans(self, messages: list[dict[str, Any]], full: str) -> list[tuple[int, int]] | None:
        """Assistant spans from the probe layout of this role sequence, or None when it does not apply."""
        if not all(m.keys() == {"role", "content"} and isinstance(m["content"], str) for m in messages):
            return None
        roles = tuple(m["role"] for m in messages)
        if roles not in self._layouts:
            self._layouts[roles] = self._probe_layout(roles)
        layout = self._layouts[roles]
        if layout is None:
            return None
        glue, reply_offsets = layout
        contents = [m["content"] for m in messages]
        if full != "".join(g + c for g, c in zip(glue, [*contents, ""], strict=True)):
            return None
        ends, position = [], 0
        for g, c in zip(glue, contents, strict=False):
            position += len(g) + len(c)
            ends.append(position)  # where each content ends in `full`
        return [
            (ends[i] - len(contents[i]) - len(glue[i]) + start, ends[i] + end)
            for i, (start, end) in reply_offsets.items()
        ]

    def _probe_layout(self, roles: tuple[str, ...]) -> tuple[list[str], dict[int, tuple[int, int]]] | None:
        """Glue strings around placeholder contents, and each reply's span as offsets into its glue."""
        placeholders = [f"{_PROBE}{i}{_PROBE}" for i in range(len(roles))]
        probe = [{"role": r, "content": p} for r, p in zip(roles, placeholders, strict=True)]
        full = self.render(probe)
        starts = [full.find(p) for p in placeholders]
        if -1 in starts or starts != sorted(starts):
            return None
        ends = [s + len(p) for s, p in zip(starts, placeholders, strict=True)]
        glue = [full[a:b] for a, b in zip([0, *ends], [*starts, len(full)], strict=True)]
        offsets = {}
        replies = [i for i, r in enumerate(roles) if r == "assistant"]
        for (start, end), i in zip(self._prefix_spans(probe, full), replies, strict=True):
            before, after = (ends[i - 1] if i else 0), (starts[i + 1] if i + 1 < len(roles) else len(full))
            if not (before <= start <= starts[i] and ends[i] <= end <= after):
                return None
            offsets[i] = (start - before, end - ends[i])
        return glue, offsets


def _pieces(full: str, spans: list[tuple[int, int]]) -> list[tuple[str, bool]]:
    """Split `full` into context and assistant pieces at the given assistant spans."""
    pieces, done = [], 0
    for start, end in spans:
        pieces += [(full[done:start], False), (full[start:end], True)]
        done = end
    pieces.append((full[done:], False))
    return [(text, trainable) for text, trainable in pieces if text]


def resolve_template_source(chat_template: str | None, tokenizer_template: str | None) -> str | None:
    """The template text for a `chat_template` parameter: unset, a bundled name, a .jinja path, or literal text."""
    if chat_template is None:
        return tokenizer_template
    bundled = BUNDLED_DIR / f"{chat_template}.jinja"
    if re.fullmatch(r"[\w-]+", chat_template) and bundled.exists():
        return bundled.read_text()
    if chat_template.endswith(".jinja") and Path(chat_template).exists():
        return Path(chat_template).read_text()
    if "{%" in chat_template or "{{" in chat_template:
        return chat_template
    return None
