#!/usr/bin/env python3
"""llama.cpp's logits for a mixed-precision GGUF file written by `bitnet convert`: the
`gguf_py` fixture's checkpoint with block 0 in Q8_0, `blk.1.attn_v` in Q6_K,
`blk.1.ffn_down` in F16 and the rest TQ2_0, llama.cpp architecture, F32 embeddings.
The test (crates/bitnet-inference/tests/converted.rs,
`a_mixed_precision_file_gives_llama_cpp_logits`) converts the same input with the same
policy and checks our logits against these.

    cargo build --release -p bitnet-cli
    # tools/llama_logits built as in crates/bitnet-inference/tests/fixtures/gguf_py/README.md
    /tmp/refvenv/bin/python tools/make_mixed_llama_fixture.py \
        --bitnet target/release/bitnet --llama-logits /tmp/llamacpp/llama_logits

Writes crates/bitnet-inference/tests/fixtures/gguf_py/mixed_llama_logits.safetensors:
`ids` (I64) and `logits` [ids, vocab] (F32), and the policy under the metadata key
`policy`.
"""

import argparse
import json
import os
import subprocess
import tempfile

import numpy as np
from safetensors.numpy import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "crates", "bitnet-inference", "tests", "fixtures", "gguf_py")
POLICY = """default = "ternary"
[[rules]]
match = "blk.0.*"
precision = "int8"
[[rules]]
match = "blk.1.ffn_down.weight"
precision = "f16"
[[rules]]
match = "blk.1.attn_v.weight"
precision = "q6_k"
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bitnet", required=True)
    ap.add_argument("--llama-logits", required=True)
    args = ap.parse_args()
    ids = load_file(os.path.join(FIX, "llama_logits.safetensors"))["ids"]
    with tempfile.TemporaryDirectory() as tmp:
        policy = os.path.join(tmp, "policy.toml")
        with open(policy, "w") as f:
            f.write(POLICY)
        model = os.path.join(tmp, "mixed.gguf")
        subprocess.run([args.bitnet, "convert", os.path.join(FIX, "hf"), model, "--to", "gguf:tq2_0",
                        "--arch", "bitnet", "--embeddings", "f32", "--precision-policy", policy,
                        "-q"], check=True)
        out = subprocess.run([args.llama_logits, model] + [str(int(i)) for i in ids],
                             check=True, capture_output=True, text=True)
    doc = json.loads(out.stdout)
    logits = np.array(doc["logits"], dtype=np.float32)
    assert logits.shape == (len(ids), doc["n_vocab"]), logits.shape
    save_file({"ids": ids.astype(np.int64), "logits": logits},
              os.path.join(FIX, "mixed_llama_logits.safetensors"), metadata={"policy": POLICY})
    print("max |logit|", float(np.abs(logits).max()))


if __name__ == "__main__":
    main()
