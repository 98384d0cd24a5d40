"""Chat backends for the LLM-driven search operator: a local transformers chat model, or any
OpenAI-compatible HTTP endpoint (POST {base}/v1/chat/completions, standard library only).

Both answer `chat(messages, max_tokens, temperature, seed) -> str`. Replies are text to be parsed and
validated by the caller (operators.py); nothing here trusts them.
"""
from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from typing import Optional

import torch

from ..errors import GreenpruneError
from ..modelio.load import load_model


class ChatBackend:
    name = "base"

    def chat(self, messages: list[dict], max_tokens: int = 256, temperature: float = 0.7, seed: int = 0) -> str:
        raise NotImplementedError


class LocalChat(ChatBackend):
    """A transformers causal LM with a chat template, generating on the CPU (or wherever it lives)."""

    def __init__(self, model, tokenizer, name: str = "local"):
        if not getattr(tokenizer, "chat_template", None):
            raise GreenpruneError(f"chat model '{name}' has no chat template")
        self.model, self.tokenizer, self.name = model, tokenizer, name

    @classmethod
    def load(cls, spec: Optional[str]) -> "LocalChat":
        model, tok = load_model(spec)
        return cls(model, tok, str(spec or "default:SmolLM2-135M-Instruct"))

    @torch.no_grad()
    def chat(self, messages, max_tokens=256, temperature=0.7, seed=0):
        tok = self.tokenizer
        enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        ids = enc["input_ids"]
        state = torch.random.get_rng_state()
        torch.random.manual_seed(int(seed))  # generate() samples from the global generator: seeded, then restored
        try:
            kw = dict(do_sample=temperature > 0, max_new_tokens=int(max_tokens),
                      pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
            if temperature > 0:
                kw.update(temperature=float(temperature), top_p=0.95)
            out = self.model.generate(input_ids=ids, attention_mask=enc.get("attention_mask"), **kw)
        finally:
            torch.random.set_rng_state(state)
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


class HTTPChat(ChatBackend):
    """An OpenAI-compatible endpoint: base URL like http://127.0.0.1:8000 (with or without /v1)."""

    def __init__(self, url: str, model: str = "default", timeout: float = 120.0, api_key: Optional[str] = None):
        if not re.match(r"^https?://", url):
            raise GreenpruneError(f"LLM endpoint must be an http(s) URL, got '{url}'")
        base = url.rstrip("/")
        self.base = base[: -len("/v1")] if base.endswith("/v1") else base
        self.model, self.timeout, self.api_key, self.name = model, timeout, api_key, url

    def _request(self, path: str, body: Optional[dict] = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method="GET" if body is None else "POST",
                                     headers={"Content-Type": "application/json"})
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:300].decode("utf-8", "replace")
            raise GreenpruneError(f"LLM endpoint {self.base}{path} answered HTTP {e.code}: {detail}") from e
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise GreenpruneError(f"LLM endpoint {self.base} is unreachable ({reason}); start one with "
                                  f"`python -m greenprune.llm_server --port PORT` or use --llm self") from e
        try:
            return json.loads(raw)
        except ValueError as e:
            raise GreenpruneError(f"LLM endpoint {self.base}{path} did not answer JSON: {raw[:200]!r}") from e

    def check(self) -> list[str]:
        """The endpoint's model ids (GET /v1/models): fails fast, before a search starts, when unreachable."""
        d = self._request("/v1/models")
        return [m.get("id", "?") for m in d.get("data", [])] if isinstance(d, dict) else []

    def chat(self, messages, max_tokens=256, temperature=0.7, seed=0):
        d = self._request("/v1/chat/completions", {"model": self.model, "messages": messages,
                                                   "max_tokens": int(max_tokens), "temperature": float(temperature),
                                                   "seed": int(seed)})
        try:
            content = d["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as e:
            raise GreenpruneError(f"LLM endpoint {self.base} answered without choices[0].message.content") from e
        if not isinstance(content, str):
            raise GreenpruneError(f"LLM endpoint {self.base} answered a non-text message")
        return content


def make_backend(spec: str, self_model=None, self_tokenizer=None, timeout: float = 120.0) -> ChatBackend:
    """'self': the model being pruned (its dense weights, never the masked copy); an http(s) URL: that
    endpoint (checked now); anything else: a local model path or hub id."""
    if spec == "self":
        if self_model is not None:
            return LocalChat(self_model, self_tokenizer, "self")
        return LocalChat.load(None)
    if spec.startswith(("http://", "https://")):
        b = HTTPChat(spec, timeout=timeout)
        b.check()
        return b
    return LocalChat.load(spec)


def extract_objects(text: str, key: str) -> list[dict]:
    """Every complete JSON object in the text that has `key` (outermost first, not descending into one found),
    so the finished entries of a reply cut off by the token limit are still read."""
    dec, out, pos = json.JSONDecoder(), [], 0
    for m in re.finditer(r"\{", text):
        if m.start() < pos:
            continue
        try:
            obj, end = dec.raw_decode(text, m.start())
        except ValueError:
            continue
        if isinstance(obj, dict) and key in obj:
            out.append(obj)
            pos = end
    return out


def extract_json(text: str):
    """The first JSON object or array in a reply (also inside ``` fences); None if there is none."""
    dec = json.JSONDecoder()
    for m in re.finditer(r"[\[{]", text):
        try:
            obj, _ = dec.raw_decode(text[m.start():])
            return obj
        except ValueError:
            continue
    return None
