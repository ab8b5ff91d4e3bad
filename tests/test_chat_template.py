"""Our template rendering equals transformers', and assistant segments match its assistant mask."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import DATA
from transformers import AutoTokenizer

from nemotron_assets.steps.data_prep.chat_template import ChatTemplate, TemplateError, resolve_template_source
from nemotron_assets.steps.data_prep.tokenizer import load_tokenizer

# A ChatML template without generation markers, in the style of SmolLM2's own (default system prompt injected).
PLAIN_CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are helpful.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def conversations() -> list[list[dict]]:
    return [json.loads(line)["messages"] for line in (DATA / "tiny_chat.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def hf_tokenizer(fixtures_dir: Path):
    return AutoTokenizer.from_pretrained(fixtures_dir / "tiny-bpe")


@pytest.mark.parametrize("template_name", ["own", "plain"])
def test_render_matches_transformers(hf_tokenizer, template_name: str):
    source = hf_tokenizer.chat_template if template_name == "own" else PLAIN_CHATML
    template = ChatTemplate(source)
    for messages in conversations():
        for prompt in (False, True):
            expected = hf_tokenizer.apply_chat_template(
                messages, chat_template=source, tokenize=False, add_generation_prompt=prompt
            )
            assert template.render(messages, add_generation_prompt=prompt) == expected


def test_marked_segments_match_transformers_assistant_mask(hf_tokenizer, tokenizer_dir: Path):
    tokenizer = load_tokenizer(str(tokenizer_dir))
    template = ChatTemplate(tokenizer.chat_template)
    assert template.marked
    for messages in conversations():
        pieces = template.segments(messages)
        ids = [i for text, _ in pieces for i in tokenizer.encode([text])[0]]
        mask = [int(t) for text, t in pieces for _ in tokenizer.encode([text])[0]]
        reference = hf_tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        assert ids == reference["input_ids"]
        assert mask == reference["assistant_masks"]


def test_prefix_segments_cover_each_reply_through_its_end_token():
    template = ChatTemplate(PLAIN_CHATML)
    messages = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "A2"},
    ]
    pieces = template.segments(messages)
    assert "".join(text for text, _ in pieces) == template.render(messages)
    assert [text for text, trainable in pieces if trainable] == ["A1<|im_end|>\n", "A2<|im_end|>\n"]
    assert pieces[0][0].endswith("<|im_start|>assistant\n") and not pieces[0][1]


def test_template_errors_are_reported():
    strict = ChatTemplate("{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}x")
    with pytest.raises(TemplateError, match="user first"):
        strict.segments([{"role": "assistant", "content": "hi"}])
    unstable = ChatTemplate("{{ messages | length }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(TemplateError, match="prefix-stable"):
        unstable.segments([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])


def test_resolve_template_source(tmp_path: Path):
    assert resolve_template_source(None, "own") == "own"
    assert "{% generation %}" in resolve_template_source("chatml", None).replace(
        "{%- generation %}", "{% generation %}"
    )
    path = tmp_path / "t.jinja"
    path.write_text("{{ messages }}")
    assert resolve_template_source(str(path), None) == "{{ messages }}"
    assert resolve_template_source("{{ x }}", None) == "{{ x }}"
    assert resolve_template_source("no_such_template", None) is None


def test_probe_layouts_give_the_prefix_spans():
    template = ChatTemplate(PLAIN_CHATML)
    with_system = [{"role": "system", "content": "Be brief."}, *conversations()[0]]
    for messages in [*conversations(), with_system]:
        full = template.render(messages)
        assert template._layout_spans(messages, full) == template._prefix_spans(messages, full)
    assert len(template._layouts) == len({tuple(m["role"] for m in c) for c in [*conversations(), with_system]})


def test_content_dependent_templates_fall_back_to_prefix_renders():
    trimming = ChatTemplate(PLAIN_CHATML.replace("message['content']", "message['content'] | trim"))
    messages = [{"role": "user", "content": "  padded question  "}, {"role": "assistant", "content": " answer "}]
    full = trimming.render(messages)
    assert trimming._layout_spans(messages, full) is None  # the render does not contain the raw contents
    assert [t for t, trainable in trimming.segments(messages) if trainable] == ["answer<|im_end|>\n"]
