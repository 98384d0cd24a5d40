"""Instruction data mined from real code: (signature + docstring -> body) pairs, decontaminated against the
evaluation files, and the user's own JSONL rows."""
import json
import sysconfig
from pathlib import Path

import pytest

from greenprune.data.corpus import Document
from greenprune.errors import GreenpruneError
from greenprune.data.instructions import build_examples, decontaminate, example_blocks, load_instruction_rows, mine_functions

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def test_mining_splits_real_functions_at_the_docstring():
    text = (STDLIB / "textwrap.py").read_text()
    ex = {e.source.split(":")[1]: e for e in mine_functions([Document("textwrap.py", text)])}
    assert len(ex) >= 5
    dedent = next(e for e in ex.values() if e.prompt.startswith("def dedent("))
    assert '"""' in dedent.prompt and dedent.prompt.rstrip().endswith('"""')
    assert "def dedent" not in dedent.response and dedent.response.startswith("    ")
    compile(dedent.prompt + dedent.response, "x", "exec")  # prompt + body is the function again
    method = next(e for e in ex.values() if e.prompt.startswith("def wrap(self"))  # a method, dedented to column 0
    compile(method.prompt + method.response, "x", "exec")


def test_undocumented_or_unparsable_code_gives_nothing():
    assert mine_functions([Document("a.py", "def f(x):\n    return x\n"), Document("b.py", "def (:\n")]) == []


def test_decontamination_drops_bodies_sharing_long_ngrams_with_eval_files():
    docs = [Document("textwrap.py", (STDLIB / "textwrap.py").read_text())]
    ex = mine_functions(docs)
    target = ex[0]
    kept, dropped = decontaminate(ex, ["# an evaluation file quoting one body\n" + target.response])
    assert dropped >= 1 and target not in kept and len(kept) == len(ex) - dropped
    kept, dropped = decontaminate(ex, [(STDLIB / "json" / "decoder.py").read_text()])
    assert dropped == 0 and kept == ex


def test_user_jsonl_rows_and_bad_files(tmp_path):
    good = tmp_path / "d.jsonl"
    good.write_text(json.dumps({"instruction": "Write add.", "response": "def add(a, b):\n    return a + b\n"}) + "\n"
                    + json.dumps({"text": "x = 1\n"}) + "\n" + json.dumps({"other": 1}) + "\n")
    rows = load_instruction_rows(good)
    assert [r.text for r in rows] == ["Write add.\ndef add(a, b):\n    return a + b\n", "x = 1\n"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "?"}) + "\n\n" + json.dumps([1, 2]) + "\n")
    with pytest.raises(GreenpruneError, match="no usable rows"):
        load_instruction_rows(bad)
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    with pytest.raises(GreenpruneError, match="not valid JSON"):
        build_examples(str(broken))


def test_mined_directory_is_split_and_packed_into_blocks(tmp_path, real_tokenizer):
    for name in ("textwrap.py", "shlex.py", "fnmatch.py", "glob.py", "bisect.py", "colorsys.py", "heapq.py", "calendar.py"):
        (tmp_path / name).write_text((STDLIB / name).read_text())
    ex, summary = build_examples(str(tmp_path), eval_specs=("pypkg:json",))
    assert summary["rows"] == len(ex) > 0 and summary["mined"] >= summary["rows"]
    blocks = example_blocks(real_tokenizer, ex, seq_len=64)
    assert blocks.shape[1] == 64 and blocks.shape[0] >= 10
    assert (blocks == real_tokenizer.eos_token_id).any()  # examples are separated by EOS
    with pytest.raises(GreenpruneError, match="too few tokens"):
        example_blocks(real_tokenizer, ex[:1], seq_len=100_000)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.py").write_text("def f(value):\n    return value\n")
    (tmp_path / "empty" / "b.py").write_text("name = other\n")
    with pytest.raises(GreenpruneError, match="no documented Python functions"):
        build_examples(str(tmp_path / "empty"), eval_specs=())
