#!/usr/bin/env python3
"""Loads an HF packed checkpoint written by `bitnet convert --to hf-packed`
in transformers (`BitNetForCausalLM.from_pretrained`) and compares its
logits with transformers' own online-quantized logits of the same latent
weights (the `online` tiny fixture's expected.safetensors).

Run by hand (CI has no torch):

    F=crates/bitnet-inference/tests/fixtures/tiny/online
    mkdir -p /tmp/float && cp $F/model.safetensors $F/tokenizer.json /tmp/float/
    python3 -c "import json,sys; c=json.load(open('$F/config.json')); c.pop('quantization_config'); json.dump(c, open('/tmp/float/config.json','w'))"
    bitnet convert /tmp/float /tmp/packed --to hf-packed --embeddings f32
    TORCHDYNAMO_DISABLE=1 /tmp/refvenv/bin/python tools/check_converted_hf.py /tmp/packed $F/expected.safetensors
"""

import sys

import torch
from safetensors.torch import load_file
from transformers import BitNetForCausalLM

packed, expected = sys.argv[1], sys.argv[2]
# The tolerance: 1e-3 for f32 files; f16/bf16 files compute in that dtype.
tol = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-3
model = BitNetForCausalLM.from_pretrained(packed, dtype="auto").eval()
exp = load_file(expected)
worst = 0.0
for p in range(3):
    ids = exp[f"ids_p{p}"].reshape(1, -1)
    with torch.no_grad():
        got = model(ids).logits[0].float()
    want = exp[f"logits_p{p}"].reshape(got.shape)
    diff = (got - want).abs().max().item()
    same = (got.argmax(-1) == want.argmax(-1)).float().mean().item()
    print(f"prompt {p}: max |logit diff| {diff:.3e}, same top-1 {same:.0%}")
    worst = max(worst, diff)
print(f"worst {worst:.3e}")
sys.exit(0 if worst < tol else 1)
