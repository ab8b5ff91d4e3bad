"""Chat templates rendered the way transformers renders them, split into trainable and context segments.

Templates with `{% generation %}` blocks give the assistant spans in one render; other templates are split
by rendering growing prefixes of the conversation (each assistant turn = prefix-with-reply minus
prefix-with-generation-prompt), which needs the template to be prefix-stable.
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

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "templates"
GEN_OPEN, GEN_CLOSE = "\ue000", "\ue001"
_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")
_SPLIT = re.compile(f"([{GEN_OPEN}{GEN_CLOSE}])")


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
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


class ChatTemplate:
    """A compiled chat template plus the special tokens it may reference."""

    def __init__(self, source: str, special_tokens: dict[str, str] | None = None):
        self.source = source
        self.marked = bool(_MARKER.search(source))
        self.fingerprint = hashlib.sha256(source.encode()).hexdigest()
        self._template = _environment().from_string(source)
        self._context = dict(special_tokens or {})

    def _render(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt, **self._context)

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
        """The conversation as text, exactly as the model sees it."""
        return self._render(messages, add_generation_prompt).replace(GEN_OPEN, "").replace(GEN_CLOSE, "")

    def segments(self, messages: list[dict[str, Any]]) -> list[tuple[str, bool]]:
        """The rendered conversation as consecutive (text, is_assistant) pieces."""
        pieces = self._marked_segments(messages) if self.marked else self._prefix_segments(messages)
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

    def _prefix_segments(self, messages: list[dict[str, Any]]) -> list[tuple[str, bool]]:
        full = self.render(messages)
        pieces, done = [], 0
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self.render(messages[:i], add_generation_prompt=True) if i else ""
            with_reply = self.render(messages[: i + 1])
            if not (full.startswith(with_reply) and with_reply.startswith(prompt) and len(prompt) >= done):
                raise TemplateError("template renders are not prefix-stable; use one with {% generation %} markers")
            pieces += [(full[done : len(prompt)], False), (full[len(prompt) : len(with_reply)], True)]
            done = len(with_reply)
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
