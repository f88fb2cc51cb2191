"""A small random Llama teacher as a Hugging Face directory (config.json, model.safetensors,
tokenizer.json), for multi-GPU and pipeline checks on the GPU machine where no model hub is reachable.
   python3 scripts/device/make_tiny_teacher.py TOKENIZER_JSON OUT_DIR [layers] [d_model]
Needs torch and transformers (the GPU machine has both). Weights are random: the point is timing and
the equality of 1-GPU and multi-GPU runs, not quality."""
import json
import os
import shutil
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

tok, out = sys.argv[1], sys.argv[2]
layers = int(sys.argv[3]) if len(sys.argv) > 3 else 8
d = int(sys.argv[4]) if len(sys.argv) > 4 else 512
vocab = len(json.load(open(tok))["model"]["vocab"])
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=vocab, hidden_size=d, intermediate_size=4 * d, num_hidden_layers=layers,
                  num_attention_heads=d // 64, num_key_value_heads=max(1, d // 192), max_position_embeddings=4096,
                  rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True, torch_dtype="bfloat16")
model = LlamaForCausalLM(cfg).to(torch.bfloat16)
os.makedirs(out, exist_ok=True)
model.save_pretrained(out, safe_serialization=True)
shutil.copy(tok, os.path.join(out, "tokenizer.json"))
cfg_json = os.path.join(os.path.dirname(tok), "tokenizer_config.json")
if os.path.exists(cfg_json):
    shutil.copy(cfg_json, os.path.join(out, "tokenizer_config.json"))
print(f"tiny teacher: {out} ({layers} layers, d {d}, vocab {vocab})")
