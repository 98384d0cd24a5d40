"""Calibration / evaluation data: the stdlib split, user directories, JSONL, datasets, budgets, errors."""
import json

import pytest

from greenprune.data import corpus as D
from greenprune.errors import GreenpruneError


def test_stdlib_split_is_deterministic_disjoint_and_nonempty():
    c1, h1 = D.calibration_and_heldout("stdlib")
    c2, h2 = D.calibration_and_heldout("stdlib")
    assert [d.name for d in c1] == [d.name for d in c2] and [d.name for d in h1] == [d.name for d in h2]
    assert not {d.name for d in c1} & {d.name for d in h1}
    assert len(h1) > 50 and len(c1) > 2 * len(h1)
    assert any(d.name == "json/decoder.py" for d in c1 + h1)


def test_directory_and_data_table_filter(tmp_path):
    (tmp_path / "a.py").write_text("def f(x):\n    return x + 1\n")
    (tmp_path / "table.py").write_text("T = [" + ", ".join(str(i) for i in range(2000)) + "]\n")
    (tmp_path / "img.bin").write_bytes(b"\xff\xfe\x00")
    sub = tmp_path / "pkg"
    sub.mkdir()
    (sub / "b.py").write_text("class B:\n    pass\n")
    names = sorted(d.name for d in D.load_documents(str(tmp_path)))
    assert names == ["a.py", "pkg/b.py"]


def test_jsonl_text_and_instruction_rows(tmp_path):
    p = tmp_path / "d.jsonl"
    rows = [{"text": "print(1)"}, {"instruction": "add", "response": "a + b"}, {"other": 1}, {"prompt": "p", "completion": "c"}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    texts = [d.text for d in D.load_documents(str(p))]
    assert texts == ["print(1)", "add\na + b", "p\nc"]


def test_jsonl_with_bad_line_names_the_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "ok"}\n{broken\n')
    with pytest.raises(GreenpruneError, match=r"d.jsonl:2"):
        D.load_documents(str(p))


def test_datasets_directory(tmp_path):
    datasets = pytest.importorskip("datasets", reason="the datasets extra is not installed")
    ds = datasets.Dataset.from_dict({"content": ["def a():\n    return 1\n", "x = 2\n", ""]})
    ds.save_to_disk(str(tmp_path / "ds"))
    assert [d.text for d in D.load_documents(str(tmp_path / "ds"))] == ["def a():\n    return 1\n", "x = 2\n"]
    assert [d.text for d in D.load_documents(f"datasets:{tmp_path / 'ds'}")][0].startswith("def a")


@pytest.mark.parametrize("content", ["", "   \n\n", '{"other": 1}\n'])
def test_empty_calibration_data_is_an_error(tmp_path, content):
    p = tmp_path / "d.jsonl"
    p.write_text(content)
    with pytest.raises(GreenpruneError, match="empty"):
        D.calibration_and_heldout(str(p))


def test_missing_data_path():
    with pytest.raises(GreenpruneError, match="not found"):
        D.load_documents("/no/such/dir")
    with pytest.raises(GreenpruneError, match="no installed package"):
        D.load_documents("pypkg:no_such_package_xyz")


def test_token_blocks_respect_budget(real_tokenizer):
    calib, _ = D.calibration_and_heldout("stdlib")
    b = D.token_blocks(real_tokenizer, calib, 64, 1000)
    assert b.shape == (15, 64)
    assert b.max().item() < len(real_tokenizer)


def test_token_blocks_start_like_evaluation_windows(real_tokenizer):
    """Each block is the start token evaluation windows use, then the next 63 tokens of the joined documents:
    nothing skipped, nothing repeated (statistics measured at position 0 as the model is used)."""
    calib, _ = D.calibration_and_heldout("stdlib")
    b = D.token_blocks(real_tokenizer, calib, 64, 1000)
    start = D.window_start_id(real_tokenizer)
    assert start == real_tokenizer.bos_token_id and (b[:, 0] == start).all()
    stream = []
    for d in D.hashed_order(calib):
        stream += real_tokenizer(d.text, add_special_tokens=False)["input_ids"] + [real_tokenizer.eos_token_id]
        if len(stream) >= b.shape[0] * 63:
            break
    assert b[:, 1:].reshape(-1).tolist() == stream[: b.shape[0] * 63]


def test_eval_snippets_are_the_same_characters_for_every_model(real_tokenizer):
    _, held = D.calibration_and_heldout("stdlib")
    s = D.eval_snippets(real_tokenizer, held, 3000)
    n = sum(len(real_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in s)
    assert 1000 < n <= 3000
    assert all(t in {d.text for d in held} or any(d.text.startswith(t) for d in held) for t in s)
