"""A loopback OpenAI-compatible server for tests: a local HF causal LM behind /v1/completions (echoed prompt
log-probs, what lm-eval's log-likelihood requests need) and /v1/chat/completions (greedy replies), with bearer-key
auth. Every score a client computes through it comes from the model."""

from __future__ import annotations

import json
import threading
from contextlib import AbstractContextManager
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from nemotron_assets.fixtures.services import JsonHandler, running


class ServedModel:
    """The model and tokenizer behind the endpoints, one request at a time."""

    def __init__(self, path: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.lock = threading.Lock()

    def echo_logprobs(self, tokens: list[int]) -> dict[str, Any]:
        """OpenAI `logprobs` for the prompt echoed plus one greedy token: each token's log-prob given what precedes
        it (None for the first) and the top-1 alternative."""
        with self.lock, self.torch.no_grad():
            logits = self.model(self.torch.tensor([tokens])).logits[0]
        logprobs = logits.log_softmax(-1)
        greedy = int(logprobs[-1].argmax())
        sequence = [*tokens, greedy]
        token_logprobs: list[float | None] = [None]
        top_logprobs: list[dict[str, float] | None] = [None]
        for position, token in enumerate(sequence[1:]):
            row = logprobs[position]
            best = int(row.argmax())
            token_logprobs.append(float(row[token]))
            top_logprobs.append({self.tokenizer.decode([best]): float(row[best])})
        return {
            "tokens": [self.tokenizer.decode([t]) for t in sequence],
            "token_logprobs": token_logprobs,
            "top_logprobs": top_logprobs,
        }

    def chat(self, messages: list[dict[str, str]], max_tokens: int, stop: list[str]) -> str:
        """Greedy reply to `messages` rendered with the model's chat template, cut at the first stop string."""
        input_ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
        with self.lock, self.torch.no_grad():
            output = self.model.generate(
                input_ids, max_new_tokens=max_tokens, do_sample=False, pad_token_id=self.tokenizer.pad_token_id
            )
        text = self.tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True)
        for marker in stop:
            text = text.split(marker)[0]
        return text


def completions(model: ServedModel, body: dict[str, Any]) -> dict[str, Any]:
    if not (body.get("echo") and body.get("logprobs")):
        raise ValueError("this server answers only log-prob requests (echo + logprobs) on /v1/completions")
    prompts = body["prompt"] if isinstance(body["prompt"][0], list) else [body["prompt"]]
    return {
        "object": "text_completion",
        "model": body["model"],
        "choices": [
            {"index": i, "text": "", "logprobs": model.echo_logprobs(tokens), "finish_reason": "length"}
            for i, tokens in enumerate(prompts)
        ],
    }


def chat_completions(model: ServedModel, body: dict[str, Any]) -> dict[str, Any]:
    stop = body.get("stop") or []
    reply = model.chat(body["messages"], body.get("max_tokens", 16), [stop] if isinstance(stop, str) else stop)
    return {
        "object": "chat.completion",
        "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
    }


ROUTES = {"/v1/completions": completions, "/v1/chat/completions": chat_completions}


class OpenAIServer(ThreadingHTTPServer):
    """Serves `model` under `model_id`; requests must carry `Authorization: Bearer <api_key>`. `requests` counts the
    answered requests per route."""

    def __init__(self, model: ServedModel, model_id: str, api_key: str) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.model, self.model_id, self.api_key = model, model_id, api_key
        self.requests = dict.fromkeys(ROUTES, 0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(JsonHandler):
    server: OpenAIServer

    def do_POST(self) -> None:  # noqa: N802 - the http.server hook name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.headers.get("Authorization") != f"Bearer {self.server.api_key}":
            return self.reply(401, {"error": {"message": "invalid api key"}})
        if self.path not in ROUTES or body.get("model") != self.server.model_id:
            return self.reply(404, {"error": {"message": f"no model {body.get('model')!r} at {self.path}"}})
        try:
            answer = ROUTES[self.path](self.server.model, body)
        except ValueError as e:
            return self.reply(400, {"error": {"message": str(e)}})
        self.server.requests[self.path] += 1
        self.reply(200, answer)


def serve(model: ServedModel, model_id: str, api_key: str) -> AbstractContextManager[OpenAIServer]:
    """An OpenAIServer for `model`, running in a thread for the duration of the block."""
    return running(OpenAIServer(model, model_id, api_key))
