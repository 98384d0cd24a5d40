"""The OpenAI-compatible chat server with the real default model, the HTTP backend against it, and the LLM
operator through it (including an endpoint that goes away in the middle of a search)."""
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import replace

import pytest

from greenprune.errors import GreenpruneError
from greenprune.search.llm_client import HTTPChat, LocalChat
from greenprune.llm_server import ChatServer
from greenprune.modelio.load import load_model
from greenprune.search.operators import LLMOperator
from test_operators import in_space, population, space

MSG = [{"role": "user", "content": "Write the JSON object {\"a\": 1}."}]


@pytest.fixture(scope="module")
def server(default_dir):
    m, t = load_model(str(default_dir))
    srv = ChatServer(LocalChat(m, t, "smollm2"), port=0)
    srv.start_thread()
    yield srv
    srv.shutdown()
    srv.server_close()


def _post(url, body: bytes):
    req = urllib.request.Request(url + "/v1/chat/completions", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_http_backend_talks_to_the_real_server(server):
    c = HTTPChat(server.url + "/v1", timeout=120)
    assert c.check() == ["smollm2"]
    a = c.chat(MSG, max_tokens=6, temperature=0.8, seed=5)
    b = c.chat(MSG, max_tokens=6, temperature=0.8, seed=5)
    assert isinstance(a, str) and a.strip() and a == b  # seeded sampling: the same reply
    greedy = c.chat(MSG, max_tokens=6, temperature=0.0)
    assert greedy == LocalChat(server.backend.model, server.backend.tokenizer).chat(MSG, 6, 0.0)


def test_server_rejects_bad_requests_with_json_errors(server):
    for body in (b"{not json", b"{}", json.dumps({"messages": []}).encode(),
                 json.dumps({"messages": [{"role": "robot", "content": "x"}]}).encode(),
                 json.dumps({"messages": MSG, "max_tokens": "many"}).encode(),
                 json.dumps({"messages": MSG, "temperature": -1}).encode()):
        code, d = _post(server.url, body)
        assert code == 400 and d["error"]["message"], body
    with pytest.raises(GreenpruneError, match="HTTP 404"):
        HTTPChat(server.url)._request("/v1/nothing")
    code, d = _post(server.url, json.dumps({"messages": MSG, "max_tokens": 2}).encode())
    assert code == 200 and d["choices"][0]["message"]["role"] == "assistant"  # still serving


def test_server_binds_loopback_only(server):
    with pytest.raises(ValueError, match="loopback"):
        ChatServer(server.backend, port=0, host="0.0.0.0")


def test_unreachable_endpoint_is_a_clear_error():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(GreenpruneError, match="unreachable"):
        HTTPChat(f"http://127.0.0.1:{port}", timeout=5).chat(MSG)
    with pytest.raises(GreenpruneError, match="http"):
        HTTPChat("ftp://example")


def test_llm_operator_over_http(server):
    sp = space()
    op = LLMOperator(HTTPChat(server.url, timeout=300), max_tokens=64)
    kids = op.propose(population(sp), 3, sp, random.Random(1))
    st = op.stats()
    assert len(kids) == 3 and all(in_space(sp, g) for g, _ in kids)
    assert st["calls"] == 1 and st["call_errors"] == 0 and st["children_llm"] + st["children_fallback"] == 3


def test_search_survives_the_endpoint_going_away(tiny_dir, default_dir, tmp_path):
    """A search with the HTTP operator: generation 1 through a live server, which then stops; generation 2
    falls back to the numeric operator (counted) and the search finishes with nothing lost."""
    from test_search import DATA, _ratio
    from greenprune.planning.options import PlanOptions
    from greenprune.search.search import SearchContext, SearchOptions, run_search

    m, t = load_model(str(default_dir))
    own = ChatServer(LocalChat(m, t, "smollm2"), port=0)
    own.start_thread()
    opts = SearchOptions(model=str(tiny_dir), data=DATA, plan=PlanOptions(ratio=_ratio(tiny_dir), align=8),
                         generations=2, population=3, seq_len=32, fitness_tokens=64, stage1_tokens=32, calib_tokens=128,
                         vocab_extra=0,
                         seeds=("uniform", "global"), operator="llm", llm=own.url, llm_max_tokens=48, progress=False,
                         out=str(tmp_path / "run"))
    ctx = SearchContext(opts)

    def stop_server(gen):
        if gen == 1:
            own.shutdown()
            own.server_close()

    s = run_search(opts, ctx, on_generation=stop_server)
    st = s["operator_stats"]
    assert st["calls"] == 2 and st["call_errors"] == 1 and st["children_fallback"] >= 3
    assert len(s["history"]) == 3 and (tmp_path / "run" / "plan.json").exists()
    assert "unreachable" in " ".join(st["last_errors"])
    with pytest.raises(GreenpruneError, match="unreachable"):  # a new search refuses a dead endpoint up front
        run_search(replace(opts, out=str(tmp_path / "other")), ctx)


def test_server_as_a_process(tmp_path, default_dir):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "greenprune.llm_server", "--model", str(default_dir), "--port", str(port)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        line = ""
        deadline = time.time() + 120
        while "serving" not in line and time.time() < deadline and p.poll() is None:
            line = p.stdout.readline()
        assert "serving" in line, line
        c = HTTPChat(f"http://127.0.0.1:{port}")
        assert c.check() and c.chat(MSG, max_tokens=4, temperature=0.0).strip()
    finally:
        p.terminate()
        p.wait(timeout=30)
