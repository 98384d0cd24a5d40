"""A small OpenAI-compatible chat server for a local transformers model (loopback only, standard library HTTP).

    python -m greenprune.llm_server [--model M] [--port 8000]

Serves GET /v1/models and POST /v1/chat/completions ({"messages": [...], "max_tokens", "temperature",
"seed"}). Requests are answered one at a time (a lock around generation). Malformed requests get HTTP 400
with a JSON error body; nothing a client sends can stop the server.
"""
from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

from ..errors import GreenpruneError
from .llm_client import ChatBackend, LocalChat

log = logging.getLogger(__name__)
MAX_BODY = 1 << 20


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, backend: ChatBackend, port: int = 0, host: str = "127.0.0.1", model_id: Optional[str] = None):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the chat server listens on loopback only")
        self.backend, self.model_id, self.lock = backend, model_id or backend.name, threading.Lock()
        self.requests_served = 0
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        return f"http://{self.server_address[0]}:{self.server_address[1]}"

    def start_thread(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, daemon=True)
        t.start()
        return t


class _Handler(BaseHTTPRequestHandler):
    server: ChatServer

    def log_message(self, fmt, *args):  # quiet by default; GREENPRUNE_LOG=INFO shows requests
        log.info("%s " + fmt, self.address_string(), *args)

    def _send(self, code: int, obj: dict) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, code: int, msg: str) -> None:
        self._send(code, {"error": {"message": msg, "type": "invalid_request_error"}})

    def do_GET(self):
        if self.path.rstrip("/") == "/v1/models":
            return self._send(200, {"object": "list", "data": [{"id": self.server.model_id, "object": "model"}]})
        self._error(404, f"no route {self.path}")

    def do_POST(self):
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self._error(404, f"no route {self.path}")
        try:
            n = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            return self._error(400, "bad Content-Length")
        if not 0 < n <= MAX_BODY:
            return self._error(400 if n <= 0 else 413, "request body missing or too large")
        try:
            req = json.loads(self.rfile.read(n))
        except ValueError:
            return self._error(400, "body is not JSON")
        msgs = req.get("messages") if isinstance(req, dict) else None
        if not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                and isinstance(m.get("content"), str) for m in msgs):
            return self._error(400, "messages must be a non-empty list of {role, content} objects")
        try:
            max_tokens = min(int(req.get("max_tokens", 256)), 2048)
            temperature = float(req.get("temperature", 0.7))
            seed = int(req.get("seed", 0))
        except (TypeError, ValueError):
            return self._error(400, "max_tokens, temperature and seed must be numbers")
        if max_tokens < 1 or not 0 <= temperature <= 5:
            return self._error(400, "max_tokens must be >= 1 and temperature in [0, 5]")
        msgs = [{"role": m["role"], "content": m["content"]} for m in msgs]
        try:
            with self.server.lock:
                text = self.server.backend.chat(msgs, max_tokens, temperature, seed)
                self.server.requests_served += 1
        except Exception as e:  # a failed generation is the client's answer, not the server's end
            log.exception("generation failed")
            return self._send(500, {"error": {"message": f"{type(e).__name__}: {e}", "type": "server_error"}})
        self._send(200, {
            "id": f"chatcmpl-{self.server.requests_served}", "object": "chat.completion", "created": int(time.time()),
            "model": self.server.model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        })


def serve(model: Optional[str], port: int, host: str = "127.0.0.1") -> ChatServer:
    backend = LocalChat.load(model)
    return ChatServer(backend, port, host, model_id=backend.name)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m greenprune.llm_server",
                                 description="OpenAI-compatible chat endpoint for a local model (loopback only).")
    ap.add_argument("--model", default=None, help="model directory / hub id (default: the embedded SmolLM2-135M)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--host", default="127.0.0.1", help="loopback address to bind (127.0.0.1, localhost or ::1)")
    a = ap.parse_args(argv)
    try:
        srv = serve(a.model, a.port, a.host)
    except (GreenpruneError, ValueError, OSError) as e:
        print(f"greenprune llm_server: error: {e}")
        return 2
    print(f"serving {srv.model_id} at {srv.url}/v1/chat/completions", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
