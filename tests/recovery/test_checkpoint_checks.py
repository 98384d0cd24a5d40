"""Recovery checkpoints are checked against the run before they are resumed: real files, real tensors."""
import json

import pytest
import torch

from greenprune.errors import GreenpruneError
from greenprune.recovery.checkpoint import check_resume, load_checkpoint, save_checkpoint


@pytest.fixture
def saved(tmp_path):
    trainable = {"a.lora_A": torch.nn.Parameter(torch.randn(4, 8)), "a.lora_B": torch.nn.Parameter(torch.zeros(8, 4))}
    opt = torch.optim.AdamW(list(trainable.values()))
    save_checkpoint(tmp_path / "ck", 2, trainable, opt, {"loss": [1.0, 0.9], "lr": [1e-3, 1e-3]})
    return tmp_path / "ck", trainable


@pytest.mark.parametrize("change, msg", [
    ({"step": 10**9}, "step 1000000000 is not in [1, 6]"),
    ({"step": 2.0}, "step 2.0"),
    ({"loss": None}, "'loss' must list 2 finite numbers"),
    ({"loss": [1.0, float("nan")]}, "'loss' must list 2"),
    ({"lr": [1e-3]}, "'lr' must list 2"),
])
def test_a_state_that_claims_what_the_run_did_not_do_is_refused(saved, change, msg):
    folder, trainable = saved
    state, tensors, _ = load_checkpoint(folder)
    assert check_resume(folder, state, tensors, trainable, 6) == 2
    with pytest.raises(GreenpruneError, match="does not match this run") as e:
        check_resume(folder, {**state, **change}, tensors, trainable, 6)
    assert msg in str(e.value)


def test_wrong_shapes_and_names_are_refused(saved):
    folder, trainable = saved
    state, tensors, _ = load_checkpoint(folder)
    with pytest.raises(GreenpruneError, match=r"a.lora_A has shape \(4, 8\), this model's \(2, 8\)"):
        check_resume(folder, state, tensors, {**trainable, "a.lora_A": torch.zeros(2, 8)}, 6)
    with pytest.raises(GreenpruneError, match="other adapters"):
        check_resume(folder, state, {"x": tensors["a.lora_A"]}, trainable, 6)


def test_truncated_tensors_and_a_non_object_state_are_one_line_errors(saved):
    folder, _ = saved
    f = folder / "step-0000002" / "trainable.safetensors"
    f.write_bytes(f.read_bytes()[:-40])
    with pytest.raises(GreenpruneError, match="unreadable"):
        load_checkpoint(folder)
    (folder / "step-0000002" / "state.json").write_text(json.dumps([1, 2]))
    with pytest.raises(GreenpruneError, match="state.json is not an object"):
        load_checkpoint(folder)
