"""Tokenizers for data prep: fast batch encoding through the Rust backend, and a stable fingerprint."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


class TokenizerUnavailable(OSError):
    """The tokenizer cannot be loaded from this machine."""


@dataclass(frozen=True)
class Tokenizer:
    name_or_path: str
    backend: Any  # tokenizers.Tokenizer
    chat_template: str | None
    special_tokens: dict[str, str]

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def fingerprint(self) -> str:
        """sha256 of the tokenizer's serialized model, normalizer, pre-tokenizer and added tokens."""
        return hashlib.sha256(self.backend.to_str().encode()).hexdigest()

    def token_id(self, key: str) -> int | None:
        token = self.special_tokens.get(key)
        return None if token is None else self.backend.token_to_id(token)

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens, encoded in parallel by the Rust backend."""
        return [e.ids for e in self.backend.encode_batch_fast(texts, add_special_tokens=False)]


def _token_text(value: Any) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def _template_from_config(directory: Path, config: dict[str, Any]) -> str | None:
    jinja = directory / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text()
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: take the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return template


def load_tokenizer(name_or_path: str) -> Tokenizer:
    """Load a local tokenizer directory directly, or anything else through transformers' AutoTokenizer."""
    directory = Path(name_or_path)
    if (directory / "tokenizer.json").exists():
        from tokenizers import Tokenizer as RustTokenizer

        backend = RustTokenizer.from_file(str(directory / "tokenizer.json"))
        config_file = directory / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.exists() else {}
        template = _template_from_config(directory, config)
        special = {k: _token_text(config[k]) for k in SPECIAL_TOKEN_KEYS if config.get(k)}
    else:
        try:
            from transformers import AutoTokenizer

            loaded = AutoTokenizer.from_pretrained(name_or_path)
        except (OSError, ValueError) as e:
            raise TokenizerUnavailable(f"cannot load tokenizer {name_or_path!r}: {e}") from None
        if not hasattr(loaded, "backend_tokenizer"):
            raise TokenizerUnavailable(f"{name_or_path!r} has no fast (Rust) tokenizer")
        backend, template = loaded.backend_tokenizer, loaded.chat_template
        special = {k: getattr(loaded, k) for k in SPECIAL_TOKEN_KEYS if getattr(loaded, k, None)}
    backend.no_padding()
    backend.no_truncation()
    return Tokenizer(name_or_path, backend, template, special)


def step_tokenizer(run) -> Tokenizer:
    """The step's `tokenizer` parameter, loaded, or the step's tokenizer_unavailable error."""
    try:
        return load_tokenizer(run.p.tokenizer)
    except TokenizerUnavailable as e:
        raise run.error("tokenizer_unavailable", str(e)) from None


def tokenizer_provenance(tokenizer: Tokenizer, template=None) -> dict[str, Any]:
    """What prep, training and eval must agree on: tokenizer and chat template fingerprints."""
    return {
        "tokenizer": {
            "name_or_path": tokenizer.name_or_path,
            "fingerprint": tokenizer.fingerprint,
            "vocab_size": tokenizer.vocab_size,
            "chat_template_fingerprint": template.fingerprint if template is not None else None,
        }
    }
