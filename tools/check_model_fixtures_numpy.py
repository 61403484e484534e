#!/usr/bin/env python3
"""Optional cross-check (not needed by CI): re-implements the BitNet forward in numpy straight from
NUMERICS.md and each fixture directory's config.json + model.safetensors, and compares against
expected.safetensors. Run from the repository root:

    /tmp/refvenv/bin/python tools/check_model_fixtures_numpy.py
"""
import json, sys, numpy as np
from safetensors.numpy import load_file
root = "crates/bitnet-inference/tests/fixtures/tiny"
def rms(x, w, eps): 
    x = x.astype(np.float32); return (x / np.sqrt((x * x).mean(-1, keepdims=True) + np.float32(eps))).astype(np.float32) * w
def actq(x):
    s = np.float32(127) / np.maximum(np.abs(x).max(-1, keepdims=True), np.float32(1e-5))
    return np.clip(np.round(x * s), -128, 127).astype(np.float32), s
def unpack(p, out):
    R = p.shape[0]; rows = [((p >> (2 * k)) & 3).astype(np.int8) - 1 for k in range(4)]
    return np.concatenate(rows, 0)[:out].astype(np.float32)
def run(variant, ids):
    cfg = json.load(open(f"{root}/{variant}/config.json")); W = load_file(f"{root}/{variant}/model.safetensors")
    qc = cfg.get("quantization_config"); eps = cfg["rms_norm_eps"]
    H, nh, kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]; hd = H // nh
    theta = cfg["rope_parameters"]["rope_theta"] if "rope_parameters" in cfg else cfg["rope_theta"]
    def lin(x, name, out):
        w = W[name + ".weight"]
        if qc is None: return x @ w.T
        q, s = actq(x)
        if qc["quantization_mode"] == "online":
            m = np.float32(max(np.abs(w).mean(dtype=np.float64), 1e-5)); t = np.clip(np.round(w / m), -1, 1)
            return (q @ t.T) * m / s
        t = unpack(w, out); ws = W[name + ".weight_scale"][0]
        acc = q @ t.T
        return acc * ws / s if qc["linear_class"] == "autobitlinear" else acc / (ws * s)
    T = len(ids); x = W["model.embed_tokens.weight"][ids]
    inv = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float32) / hd)
    ang = np.arange(T, dtype=np.float32)[:, None] * inv[None]; ang = np.concatenate([ang, ang], -1)
    cos, sin = np.cos(ang), np.sin(ang)
    def rope(v):  # [T, heads, hd]
        rh = np.concatenate([-v[..., hd // 2:], v[..., :hd // 2]], -1)
        return v * cos[:, None] + rh * sin[:, None]
    hid = []
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        a = rms(x, W[p + "input_layernorm.weight"], eps)
        q = rope(lin(a, p + "self_attn.q_proj", nh * hd).reshape(T, nh, hd))
        k = rope(lin(a, p + "self_attn.k_proj", kv * hd).reshape(T, kv, hd))
        v = lin(a, p + "self_attn.v_proj", kv * hd).reshape(T, kv, hd)
        o = np.zeros((T, nh, hd), np.float32)
        for h in range(nh):
            g = h // (nh // kv); sc = q[:, h] @ k[:, g].T / np.sqrt(hd)
            sc = np.where(np.tril(np.ones((T, T), bool)), sc, -np.inf); sc = np.exp(sc - sc.max(-1, keepdims=True))
            o[:, h] = (sc / sc.sum(-1, keepdims=True)) @ v[:, g]
        x = x + lin(rms(o.reshape(T, H), W[p + "self_attn.attn_sub_norm.weight"], eps), p + "self_attn.o_proj", H)
        n = rms(x, W[p + "post_attention_layernorm.weight"], eps)
        I = cfg["intermediate_size"]
        f = np.maximum(lin(n, p + "mlp.gate_proj", I), 0) ** 2 * lin(n, p + "mlp.up_proj", I)
        x = x + lin(rms(f, W[p + "mlp.ffn_sub_norm.weight"], eps), p + "mlp.down_proj", H)
        hid.append(x)
    head = W.get("lm_head.weight", W["model.embed_tokens.weight"])
    return rms(x, W["model.norm.weight"], eps) @ head.T, hid
for v in ["float", "online", "autobitlinear_offline", "bitlinear_offline", "online_untied"]:
    E = load_file(f"{root}/{v}/expected.safetensors"); worst = 0
    for i in range(3):
        lg, hid = run(v, E[f"ids_p{i}"]); worst = max(worst, np.abs(lg - E[f"logits_p{i}"]).max())
        if i == 1: hd1 = np.abs(hid[0] - E["hidden1_p1"]).max()
    seq = list(E["ids_p1"])
    for _ in range(8): seq.append(int(run(v, np.array(seq))[0][-1].argmax()))
    print(f"{v:22s} max|logit diff| numpy vs HF = {worst:.3e}  hidden1 diff = {hd1:.3e}  greedy match = {seq[7:] == list(E['greedy_p1'])}")
