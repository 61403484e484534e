#!/usr/bin/env python3
r"""A tiny llama.cpp `bitnet`-architecture model, written by llama.cpp's own
gguf-py (TQ2_0 and TQ1_0) and by llama.cpp's quantizer (TQ1_0 with a Q6_K or
Q4_K `token_embd`), the same weights as an HF safetensors checkpoint, and
llama.cpp's logits for a fixed list of token ids.

Run by hand; the output is committed to
crates/bitnet-inference/tests/fixtures/gguf_py/ (see the README there for
building the llama.cpp peer under /tmp):

    export PYTHONPATH=/tmp/llamacpp/src/gguf-py     # llama.cpp's gguf-py
    /tmp/refvenv/bin/python tools/make_gguf_fixtures.py \
        --llama-quantize /tmp/llamacpp/llama_quantize_tq \
        --llama-logits /tmp/llamacpp/llama_logits

Without --llama-quantize / --llama-logits only the gguf-py files and the HF
checkpoint are written.

The model: vocab 64 (a byte-level GPT-2 style vocab llama.cpp accepts),
hidden 256, intermediate 256, 2 layers, 4 heads, 1 KV head (head_dim 64),
SiLU (llama.cpp's `bitnet` graph always uses SiLU), RMS eps 1e-5, RoPE theta
10000. Ternary weights are codes in {-1, 0, 1} times a per-tensor scale
k/256 (exact in f16, the TQ block scale). Layer 0 stores bare codes (block
scale 1) plus llama.cpp's optional f32 `blk.0.<name>.scale` tensors; layer 1
stores the scale in the blocks. Embeddings are F16 (tied output, as
llama.cpp's `bitnet` graph requires).
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import gguf
from gguf.constants import GGMLQuantizationType as QT, LlamaFileType
from gguf.quants import quantize
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates/bitnet-inference/tests/fixtures/gguf_py"

VOCAB, HIDDEN, FFN, LAYERS, HEADS, KV_HEADS = 64, 256, 256, 2, 4, 1
HEAD_DIM = HIDDEN // HEADS
EPS, THETA, CTX = 1e-5, 10000.0, 128
BOS, EOS = 0, 1
# The ids every logits comparison uses.
IDS = [0, 17, 42, 5, 63, 8, 23, 11, 2, 50]

# (GGUF name, HF module, rows, cols)
LINEARS = [
    ("attn_q", "self_attn.q_proj", HEADS * HEAD_DIM, HIDDEN),
    ("attn_k", "self_attn.k_proj", KV_HEADS * HEAD_DIM, HIDDEN),
    ("attn_v", "self_attn.v_proj", KV_HEADS * HEAD_DIM, HIDDEN),
    ("attn_output", "self_attn.o_proj", HIDDEN, HEADS * HEAD_DIM),
    ("ffn_gate", "mlp.gate_proj", FFN, HIDDEN),
    ("ffn_up", "mlp.up_proj", FFN, HIDDEN),
    ("ffn_down", "mlp.down_proj", HIDDEN, FFN),
]
NORMS = [
    ("attn_norm", "input_layernorm", HIDDEN),
    ("ffn_norm", "post_attention_layernorm", HIDDEN),
    ("attn_sub_norm", "self_attn.attn_sub_norm", HIDDEN),
    ("ffn_sub_norm", "mlp.ffn_sub_norm", FFN),
]


def vocab():
    """64 tokens in GPT-2's byte-level alphabet, with merges that build the
    multi-character ones; two control tokens for BOS/EOS."""
    singles = ["\u010a", "\u0120"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] \
        + [str(d) for d in range(10)] + [".", ","]
    merges = ["\u0120 t", "h e", "\u0120t he", "i n", "e r", "a n", "r e", "o n",
              "\u0120 a", "e n", "a t", "o r", "e s", "i s", "i t", "o u",
              "in g", "e d", "n d", "\u0120 s", "a r", "a l"]
    tokens = ["<|bos|>", "<|eos|>"] + singles + [m.replace(" ", "") for m in merges]
    types = [gguf.TokenType.CONTROL] * 2 + [gguf.TokenType.NORMAL] * (len(tokens) - 2)
    assert len(tokens) == VOCAB and len(set(tokens)) == VOCAB, len(tokens)
    return tokens, types, merges


def model(rng):
    """Float weights: norms, embeddings, and per linear (codes, scale)."""
    f16 = lambda a: a.astype(np.float16).astype(np.float32)
    w = {"embd": f16(rng.normal(0, 1, (VOCAB, HIDDEN))),
         "output_norm": f16(1 + 0.2 * rng.uniform(-1, 1, HIDDEN))}
    for i in range(LAYERS):
        for g, _, n in NORMS:
            w[f"{i}.{g}"] = f16(1 + 0.2 * rng.uniform(-1, 1, n))
        for g, _, r, c in LINEARS:
            codes = rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=(r, c), p=[.3, .4, .3])
            w[f"{i}.{g}"] = (codes, rng.integers(6, 21) / 256.0)
    return w


def gguf_tensors(w, ternary, embd_dtype=np.float16):
    """(name, array, raw type or None) in llama.cpp's names; `ternary` is a
    quantization type or None for F32."""
    out = [("token_embd.weight", w["embd"].astype(embd_dtype), None),
           ("output_norm.weight", w["output_norm"], None)]
    for i in range(LAYERS):
        for g, _, _ in NORMS:
            out.append((f"blk.{i}.{g}.weight", w[f"{i}.{g}"], None))
        for g, _, _, _ in LINEARS:
            codes, scale = w[f"{i}.{g}"]
            if i == 0:  # bare codes, scale in `.scale`
                value = codes.astype(np.float32)
                out.append((f"blk.{i}.{g}.scale", np.array([scale], dtype=np.float32), None))
            else:
                value = codes.astype(np.float32) * np.float32(scale)
            if ternary is None:
                out.append((f"blk.{i}.{g}.weight", value, None))
            else:
                out.append((f"blk.{i}.{g}.weight", quantize(value, ternary), ternary))
    return out


def write_gguf(path, w, ternary, file_type, embd_dtype=np.float16):
    tokens, types, merges = vocab()
    wr = gguf.GGUFWriter(str(path), "bitnet")
    wr.add_name("bitnet-rust gguf_py fixture")
    wr.add_vocab_size(VOCAB)
    wr.add_context_length(CTX)
    wr.add_embedding_length(HIDDEN)
    wr.add_feed_forward_length(FFN)
    wr.add_block_count(LAYERS)
    wr.add_head_count(HEADS)
    wr.add_head_count_kv(KV_HEADS)
    wr.add_rope_dimension_count(HEAD_DIM)
    wr.add_rope_freq_base(THETA)
    wr.add_layer_norm_rms_eps(EPS)
    wr.add_file_type(file_type)
    wr.add_tokenizer_model("gpt2")
    wr.add_tokenizer_pre("default")
    wr.add_token_list(tokens)
    wr.add_token_types(types)
    wr.add_token_merges(merges)
    wr.add_bos_token_id(BOS)
    wr.add_eos_token_id(EOS)
    for name, arr, raw in gguf_tensors(w, ternary, embd_dtype):
        if raw is None:
            wr.add_tensor(name, arr)
        else:
            wr.add_tensor(name, arr, raw_dtype=raw)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()


def write_hf(d, w):
    """`autobitlinear` + `offline`: packed 2-bit codes and weight_scale =
    the per-tensor scale, which multiplies."""
    d.mkdir(parents=True, exist_ok=True)
    t = {"model.embed_tokens.weight": w["embd"].astype(np.float16),
         "model.norm.weight": w["output_norm"]}
    for i in range(LAYERS):
        for g, hf, _ in NORMS:
            t[f"model.layers.{i}.{hf}.weight"] = w[f"{i}.{g}"]
        for g, hf, r, c in LINEARS:
            codes, scale = w[f"{i}.{g}"]
            rr = -(-r // 4)
            padded = np.full((4 * rr, c), -1, dtype=np.int16)
            padded[:r] = codes
            u = (padded + 1).astype(np.uint8)
            t[f"model.layers.{i}.{hf}.weight"] = (
                u[:rr] | (u[rr:2 * rr] << 2) | (u[2 * rr:3 * rr] << 4) | (u[3 * rr:] << 6))
            t[f"model.layers.{i}.{hf}.weight_scale"] = np.array([scale], dtype=np.float32)
    save_file(t, str(d / "model.safetensors"))
    config = {
        "architectures": ["BitNetForCausalLM"], "model_type": "bitnet",
        "vocab_size": VOCAB, "hidden_size": HIDDEN, "intermediate_size": FFN,
        "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM, "hidden_act": "silu",
        "rms_norm_eps": EPS, "rope_theta": THETA, "max_position_embeddings": CTX,
        "tie_word_embeddings": True, "bos_token_id": BOS, "eos_token_id": EOS,
        "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                "quantization_mode": "offline"},
    }
    (d / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def llama_quantize(binary, src, dst, embd_type):
    """`llama-quantize --pure --token-embedding-type EMBD SRC DST TQ1_0`,
    through tools/llama_quantize_tq.c (the same library call)."""
    subprocess.run([str(binary), str(src), str(dst), "tq1_0", embd_type], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = gguf.GGUFReader(str(dst))
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["token_embd.weight"] == embd_type.upper(), types
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-quantize", type=Path, help="tools/llama_quantize_tq.c, built")
    ap.add_argument("--llama-logits", type=Path, help="tools/llama_logits.c, built")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    w = model(np.random.default_rng(2026))
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    write_hf(out / "hf", w)
    write_gguf(out / "tq2_0.gguf", w, QT.TQ2_0, LlamaFileType.MOSTLY_TQ2_0)
    write_gguf(out / "tq1_0.gguf", w, QT.TQ1_0, LlamaFileType.MOSTLY_TQ1_0)
    files = ["tq2_0", "tq1_0"]

    if args.llama_quantize:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "f32.gguf"
            write_gguf(src, w, None, LlamaFileType.ALL_F32)
            ours = gguf.GGUFReader(str(out / "tq1_0.gguf"))
            ours = {t.name: bytes(t.data.tobytes()) for t in ours.tensors}
            for embd in ["q6_k", "q4_k"]:
                dst = out / f"tq1_0_{embd.replace('_', '')}.gguf"
                r = llama_quantize(args.llama_quantize, src, dst, embd)
                # llama.cpp's quantizer must write the same ternary blocks as gguf-py.
                for t in r.tensors:
                    if t.tensor_type == QT.TQ1_0:
                        assert bytes(t.data.tobytes()) == ours[t.name], t.name
                files.append(dst.stem)

    if args.llama_logits:
        def run(path):
            res = subprocess.run([str(args.llama_logits), str(path)] + [str(i) for i in IDS],
                                 check=True, capture_output=True, text=True)
            j = json.loads(res.stdout)
            assert j["ids"] == IDS and j["n_vocab"] == VOCAB
            return np.array(j["logits"], dtype=np.float32)

        logits = {"ids": np.array(IDS, dtype=np.int64)}
        for f in files:
            logits[f] = run(out / f"{f}.gguf")
        # The TQ2_0 model with the same (f16-exact) embeddings stored as F32,
        # so llama.cpp's output projection runs in f32 too (not committed).
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / "tq2_0_f32embd.gguf"
            write_gguf(p, w, QT.TQ2_0, LlamaFileType.MOSTLY_TQ2_0, np.float32)
            logits["tq2_0_f32embd"] = run(p)
        save_file(logits, str(out / "llama_logits.safetensors"))

    for p in sorted(out.rglob("*")):
        if p.is_file():
            print(f"{p.relative_to(out)}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    sys.exit(main())
