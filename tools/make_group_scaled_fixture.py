#!/usr/bin/env python3
"""A TQ2_0 file with a different scale in every block, as llama.cpp's quantizer writes
for float (not already ternary) weights, and llama.cpp's logits for it.

The `gguf_py` fixture model (tools/make_gguf_fixtures.py), with an FFN of 768 and its
linear layers replaced by Gaussian float weights, quantized by gguf-py's TQ2_0 quantizer (ggml's reference:
d = absmax of each 256-block, codes = round(w / d)). Our engine cannot run such layers with
the ternary kernels (one scale per tensor or row) and keeps them as dense TQ2_0 matrices;
crates/bitnet-inference/tests/gguf_models.rs checks its logits against llama.cpp's.

    PYTHONPATH=/tmp/llamacpp/src/gguf-py /tmp/refvenv/bin/python \
        tools/make_group_scaled_fixture.py --llama-logits /tmp/llamacpp/llama_logits

Writes crates/bitnet-inference/tests/fixtures/gguf_py/{tq2_0_groups.gguf,
group_llama_logits.safetensors} (`ids` I64, `logits` [ids, vocab] F32).
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np
from gguf import GGMLQuantizationType as QT, LlamaFileType
from safetensors.numpy import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_gguf_fixtures as base  # noqa: E402


def main():
    # FFN 768: `ffn_down` rows span three blocks with different scales (dense for us);
    # every other row is one block, so its scale is a per-row scale (ternary kernels).
    base.FFN = 768
    base.LINEARS = [(g, hf, base.FFN if r == 256 and g in ("ffn_gate", "ffn_up") else r,
                     base.FFN if g == "ffn_down" else c) for g, hf, r, c in base.LINEARS]
    base.NORMS = [(g, hf, base.FFN if g == "ffn_sub_norm" else n) for g, hf, n in base.NORMS]
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-logits", required=True)
    args = ap.parse_args()
    rng = np.random.default_rng(7)
    w = base.model(rng)
    for key, value in list(w.items()):
        if isinstance(value, tuple):  # a linear layer: (codes, scale)
            floats = rng.normal(0, 0.05, value[0].shape).astype(np.float16).astype(np.float32)
            w[key] = (floats, 1.0)
    out = base.OUT
    path = out / "tq2_0_groups.gguf"
    # F32 embeddings: llama.cpp's output projection then runs in f32 too, so the
    # comparison isolates the ternary layers.
    base.write_gguf(path, w, QT.TQ2_0, LlamaFileType.MOSTLY_TQ2_0, np.float32)
    res = subprocess.run([args.llama_logits, str(path)] + [str(i) for i in base.IDS],
                         check=True, capture_output=True, text=True)
    j = json.loads(res.stdout)
    assert j["ids"] == base.IDS and j["n_vocab"] == base.VOCAB
    logits = np.array(j["logits"], dtype=np.float32)
    save_file({"ids": np.array(base.IDS, dtype=np.int64), "logits": logits},
              str(out / "group_llama_logits.safetensors"))
    print(path, path.stat().st_size, "bytes; max |logit|", float(np.abs(logits).max()))


if __name__ == "__main__":
    main()
