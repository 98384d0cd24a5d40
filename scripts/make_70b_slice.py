"""Write a Llama-2-70B-shaped checkpoint slice with random bf16 weights as sharded safetensors.

Shapes are Llama-2-70B's (hidden 8192, FFN 28672, 64 heads / 8 KV heads, head 128, vocab 32000, untied head);
only the number of decoder layers is small (--layers, default 3). One shard per decoder layer (1.71 GB in
bf16) plus one for the embeddings and one for the final norm and LM head, with model.safetensors.index.json,
as large checkpoints ship. Weights are N(0, 0.02) (norms 1): a stand-in for shape, memory and speed work, never
for quality. Tensors are generated and written one at a time. Not for committing (GBs).

    python scripts/make_70b_slice.py --out /tmp/llama70b-slice --layers 3
"""
import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

H, F, NH, KV, V = 8192, 28672, 64, 8, 32000
D = H // NH


def tensor(shape, g):
    return (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(a.seed)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H, "intermediate_size": F,
              "num_attention_heads": NH, "num_key_value_heads": KV, "head_dim": D, "num_hidden_layers": a.layers,
              "vocab_size": V, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 4096,
              "hidden_act": "silu", "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
              "attention_bias": False, "mlp_bias": False, "dtype": "bfloat16"}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    weight_map, total = {}, 0
    n_files = a.layers + 2

    def write(idx, tensors):
        nonlocal total
        name = f"model-{idx:05d}-of-{n_files:05d}.safetensors"
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in tensors})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        print(f"wrote {name} ({sum(t.numel() for t in tensors.values()) / 1e6:.0f}M params)", flush=True)

    write(1, {"model.embed_tokens.weight": tensor((V, H), g)})
    for i in range(a.layers):
        p = f"model.layers.{i}."
        write(i + 2, {p + "self_attn.q_proj.weight": tensor((NH * D, H), g), p + "self_attn.k_proj.weight": tensor((KV * D, H), g),
                      p + "self_attn.v_proj.weight": tensor((KV * D, H), g), p + "self_attn.o_proj.weight": tensor((H, NH * D), g),
                      p + "mlp.gate_proj.weight": tensor((F, H), g), p + "mlp.up_proj.weight": tensor((F, H), g),
                      p + "mlp.down_proj.weight": tensor((H, F), g),
                      p + "input_layernorm.weight": torch.ones(H, dtype=torch.bfloat16),
                      p + "post_attention_layernorm.weight": torch.ones(H, dtype=torch.bfloat16)})
    write(n_files, {"model.norm.weight": torch.ones(H, dtype=torch.bfloat16), "lm_head.weight": tensor((V, H), g)})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")


if __name__ == "__main__":
    main()
