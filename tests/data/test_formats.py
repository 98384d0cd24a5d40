"""Data formats are read as what they are (JSON arrays, chat rows, instruction aliases, directories), and every
"empty" or unreadable case says what was found and what is accepted."""
import json
import logging

import pytest

from greenprune.data import corpus
from greenprune.errors import GreenpruneError


def test_a_json_array_of_records_is_read_row_by_row(tmp_path):
    p = tmp_path / "rows.json"
    p.write_text(json.dumps([{"text": "def a():\n    return 1\n"}, {"text": "def b():\n    return 2\n"}, "x = 3\n"]))
    docs = corpus.load_documents(str(p))
    assert [d.text for d in docs] == ["def a():\n    return 1\n", "def b():\n    return 2\n", "x = 3\n"]
    calib, held = corpus.calibration_and_heldout(str(p))
    assert calib and held and {d.text for d in calib}.isdisjoint(d.text for d in held)
    (tmp_path / "cfg.json").write_text('{"a": 1}')  # any other JSON stays one document
    assert [d.text for d in corpus.load_documents(str(tmp_path / "cfg.json"))] == ['{"a": 1}']


def test_instruction_rows_with_aliases_and_an_input(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [
        {"instruction": "Add one.", "input": "x = 1", "output": "x + 1"},
        {"question": "What is 2+2?", "answer": "4"},
        {"body": "plain text row"}]) + "\n")
    assert [d.text for d in corpus.load_documents(str(p))] == ["Add one.\nx = 1\nx + 1", "What is 2+2?\n4",
                                                               "plain text row"]


def test_chat_rows_are_rendered_with_the_models_chat_template(tmp_path, real_tokenizer):
    p = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": "Write f."}, {"role": "assistant", "content": "def f(): pass"}]},
            {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    docs = corpus.render_chats(real_tokenizer, corpus.load_documents(str(p)))
    assert docs[0].text == real_tokenizer.apply_chat_template(rows[0]["messages"], tokenize=False)
    assert "<|im_start|>user\nWrite f.<|im_end|>" in docs[0].text and "<|im_start|>assistant\nHello" in docs[1].text


def test_rows_without_usable_fields_name_what_was_found_and_accepted(tmp_path):
    p = tmp_path / "odd.jsonl"
    p.write_text(json.dumps({"src": "a", "dst": "b"}) + "\n")
    with pytest.raises(GreenpruneError) as e:
        corpus.calibration_and_heldout(str(p))
    assert "found 1 with dst,src" in str(e.value) and "messages" in str(e.value) and "instruction" in str(e.value)


def test_invalid_utf8_jsonl_names_the_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(b'{"text": "ok"}\n{"text": "\xff\xfe"}\n')
    with pytest.raises(GreenpruneError, match=r"bad.jsonl:2: not UTF-8"):
        corpus.load_documents(str(p))


def test_directories_read_the_documented_suffixes_tests_folders_and_more_on_request(tmp_path):
    d = tmp_path / "proj"
    (d / "tests").mkdir(parents=True)
    (d / "src").mkdir()
    (d / "src" / "a.cs").write_text("class A { int F() { return 1; } }\n")
    (d / "tests" / "test_a.py").write_text("def test_a():\n    assert 1\n")
    (d / "node_modules").mkdir()
    (d / "node_modules" / "x.js").write_text("var x = 1;\n")
    assert sorted(x.name for x in corpus.load_documents(str(d))) == ["src/a.cs", "tests/test_a.py"]
    e = tmp_path / "fsharp"
    e.mkdir()
    for i in range(3):
        (e / f"m{i}.fsx").write_text(f"let f{i} x = x + {i}\n")
    with pytest.raises(GreenpruneError) as err:
        corpus.load_documents(str(e))
    assert "found 3 .fsx" in str(err.value) and ".cs" in str(err.value) and "--suffixes" in str(err.value)
    assert len(corpus.load_documents(str(e), suffixes=("fsx",))) == 3


def test_fewer_tokens_than_the_budget_is_a_warning(real_tokenizer, caplog):
    docs = [corpus.Document("a", "def f(x):\n    return x\n" * 10)]
    with caplog.at_level(logging.WARNING):
        blocks = corpus.token_blocks(real_tokenizer, docs, 16, 4096)
    assert blocks.numel() < 4096 and "fewer than the 4096 asked for" in caplog.text
