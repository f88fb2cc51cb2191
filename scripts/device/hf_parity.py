"""Teacher parity against Hugging Face transformers (run on the GPU machine, which has torch and
transformers). The GGUF is read here with an independent numpy reader (not lizard's code), dequantized
to fp32, un-permuted to HF's Q/K row order and loaded into LlamaForCausalLM. For each prompt (token ids
made by lizard's tokenizer, given in a JSON file) it compares full-vocabulary logits at every position
with lizard's (written by `lizard debug-logits`), and greedy continuations of 64 tokens.

usage: hf_parity.py MODEL.gguf PROMPTS.json LIZARD_DIR OUT_DIR
  PROMPTS.json: [{"name":..., "ids":[...]}, ...]
  LIZARD_DIR/<name>.logits.f32 (n x vocab fp32) and LIZARD_DIR/<name>.greedy.json (64 ids)
Writes OUT_DIR/parity.json and small CI fixtures OUT_DIR/fixture_<name>.json.
"""
import json, struct, sys, os
import numpy as np
import torch

GGUF_TYPES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 8: ("Q8_0", 32, 34), 30: ("BF16", 1, 2)}


def read_gguf(path):
    buf = open(path, "rb").read()
    off = 0

    def take(fmt):
        nonlocal off
        v = struct.unpack_from("<" + fmt, buf, off)
        off += struct.calcsize("<" + fmt)
        return v[0] if len(v) == 1 else v

    def string():
        nonlocal off
        n = take("Q")
        s = buf[off:off + n].decode("utf-8", "replace")
        off += n
        return s

    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def value(t):
        if t == 8:
            return string()
        if t == 9:
            et, n = take("I"), take("Q")
            return [value(et) for _ in range(n)]
        return take(scalar[t])

    assert buf[:4] == b"GGUF"
    off = 4
    version, nt, nkv = take("I"), take("Q"), take("Q")
    meta = {}
    for _ in range(nkv):
        k = string()
        meta[k] = value(take("I"))
    infos = []
    for _ in range(nt):
        name = string()
        nd = take("I")
        dims = [take("Q") for _ in range(nd)]
        infos.append((name, dims, take("I"), take("Q")))
    align = meta.get("general.alignment", 32)
    data0 = (off + align - 1) // align * align
    tensors = {}
    for name, dims, t, o in infos:
        tname, bs, bb = GGUF_TYPES[t]
        n = int(np.prod(dims))
        raw = np.frombuffer(buf, dtype=np.uint8, count=n // bs * bb, offset=data0 + o)
        tensors[name] = dequant(tname, raw, n).reshape(list(reversed(dims)))
    return meta, tensors


def dequant(t, raw, n):
    if t == "F32":
        return raw.view(np.float32).copy()
    if t == "F16":
        return raw.view(np.float16).astype(np.float32)
    if t == "BF16":
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    if t == "Q8_0":
        b = raw.reshape(-1, 34)
        d = b[:, :2].copy().view(np.float16).astype(np.float32)
        q = b[:, 2:].view(np.int8).astype(np.float32)
        return (d * q).reshape(-1)
    if t in ("Q4_0", "Q4_1"):
        bb = 18 if t == "Q4_0" else 20
        b = raw.reshape(-1, bb)
        d = b[:, :2].copy().view(np.float16).astype(np.float32)
        qs = b[:, bb - 16:]
        q = np.concatenate([qs & 15, qs >> 4], axis=1).astype(np.float32)
        if t == "Q4_0":
            return (d * (q - 8)).reshape(-1)
        m = b[:, 2:4].copy().view(np.float16).astype(np.float32)
        return (d * q + m).reshape(-1)
    raise ValueError(t)


def unpermute(w, n_head):
    rows, cols = w.shape
    d = rows // n_head
    return w.reshape(n_head, d // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def build_hf(meta, t):
    from transformers import LlamaConfig, LlamaForCausalLM
    a = meta["general.architecture"]
    assert a == "llama", a
    L, H, Hkv = meta[a + ".block_count"], meta[a + ".attention.head_count"], meta[a + ".attention.head_count_kv"]
    d = meta[a + ".embedding_length"]
    cfg = LlamaConfig(vocab_size=t["token_embd.weight"].shape[0], hidden_size=d, intermediate_size=meta[a + ".feed_forward_length"],
                      num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=Hkv,
                      rms_norm_eps=meta[a + ".attention.layer_norm_rms_epsilon"], rope_theta=meta[a + ".rope.freq_base"],
                      max_position_embeddings=meta[a + ".context_length"], tie_word_embeddings="output.weight" not in t,
                      )
    theta = meta[a + ".rope.freq_base"]
    # transformers 5 keeps RoPE settings in rope_parameters; older versions in rope_theta
    if getattr(cfg, "rope_parameters", None) is not None:
        cfg.rope_parameters["rope_theta"] = theta
    cfg.rope_theta = theta
    print("HF config:", cfg.to_dict().get("rope_parameters"), cfg.rope_theta, flush=True)
    sd = {"model.embed_tokens.weight": t["token_embd.weight"], "model.norm.weight": t["output_norm.weight"]}
    if "output.weight" in t:
        sd["lm_head.weight"] = t["output.weight"]
    for i in range(L):
        p, q = f"blk.{i}.", f"model.layers.{i}."
        sd[q + "self_attn.q_proj.weight"] = unpermute(t[p + "attn_q.weight"], H)
        sd[q + "self_attn.k_proj.weight"] = unpermute(t[p + "attn_k.weight"], Hkv)
        sd[q + "self_attn.v_proj.weight"] = t[p + "attn_v.weight"]
        sd[q + "self_attn.o_proj.weight"] = t[p + "attn_output.weight"]
        sd[q + "mlp.gate_proj.weight"] = t[p + "ffn_gate.weight"]
        sd[q + "mlp.up_proj.weight"] = t[p + "ffn_up.weight"]
        sd[q + "mlp.down_proj.weight"] = t[p + "ffn_down.weight"]
        sd[q + "input_layernorm.weight"] = t[p + "attn_norm.weight"]
        sd[q + "post_attention_layernorm.weight"] = t[p + "ffn_norm.weight"]
    model = LlamaForCausalLM(cfg)
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, strict=False)
    assert not unexpected, unexpected
    assert all("lm_head" in m for m in missing), missing
    if cfg.tie_word_embeddings:
        model.tie_weights()
    return model.eval()


def main():
    model_path, prompts_path, lz_dir, out_dir = sys.argv[1:5]
    os.makedirs(out_dir, exist_ok=True)
    meta, tensors = read_gguf(model_path)
    model = build_hf(meta, tensors).double()  # fp64 reference
    prompts = json.load(open(prompts_path))
    report = []
    for p in prompts:
        ids = torch.tensor([p["ids"]])
        with torch.no_grad():
            ref = model(ids).logits[0].float().numpy()
            gen = model.generate(ids, max_new_tokens=64, do_sample=False, attention_mask=torch.ones_like(ids))[0, ids.shape[1]:].tolist()
        ours = np.fromfile(os.path.join(lz_dir, p["name"] + ".logits.f32"), dtype=np.float32).reshape(ref.shape)
        our_gen = json.load(open(os.path.join(lz_dir, p["name"] + ".greedy.json")))
        diff = np.abs(ours - ref)
        r = {"name": p["name"], "tokens": len(p["ids"]), "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
             "max_abs_logit": float(np.abs(ref).max()), "argmax_agree": float((ours.argmax(1) == ref.argmax(1)).mean()),
             "greedy_equal": our_gen[:len(gen)] == gen, "greedy_first_mismatch": next((i for i, (a, b) in enumerate(zip(our_gen, gen)) if a != b), None)}
        report.append(r)
        print(json.dumps(r), flush=True)
        # CI fixture: reference logits of the first 24 positions at the 64 largest entries + the greedy ids.
        k = min(24, ref.shape[0])
        top = np.argsort(-ref[:k], axis=1)[:, :64]
        json.dump({"prompt_ids": p["ids"], "ids": p["ids"][:k], "top_ids": top.tolist(), "top_logits": np.take_along_axis(ref[:k], top, 1).tolist(),
                   "greedy": gen}, open(os.path.join(out_dir, f"fixture_{p['name']}.json"), "w"))
    json.dump(report, open(os.path.join(out_dir, "parity.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
