#!/usr/bin/env python3
"""Write a byte-level BPE tokenizer.json for the tiny fixture models (vocab 256:
one token per byte, GPT-2 byte-to-unicode alphabet, no merges) with HF's
`tokenizers` library, plus the ids it gives for a few texts so the Rust side
can check its encoding against this oracle.

Run by hand (the outputs are committed):

    /tmp/refvenv/bin/python tools/make_tiny_tokenizer.py

It writes tokenizer.json into every model directory under
crates/bitnet-inference/tests/fixtures/tiny/, and tokenizer_expected.json there.
"""

import json
import os

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "crates", "bitnet-inference", "tests", "fixtures", "tiny")

alphabet = pre_tokenizers.ByteLevel.alphabet()
# GPT-2's byte-to-unicode table, in byte order, so token id == byte value.
bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
cs = bs[:]
n = 0
for b in range(256):
    if b not in bs:
        bs.append(b)
        cs.append(256 + n)
        n += 1
byte_to_char = {b: chr(c) for b, c in zip(bs, cs)}
vocab = {byte_to_char[b]: b for b in range(256)}
assert set(vocab) == set(alphabet)

tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
tok.decoder = decoders.ByteLevel()
variants = ["float", "online", "autobitlinear_offline", "bitlinear_offline", "online_untied"]
for v in variants:
    tok.save(os.path.join(OUT, v, "tokenizer.json"))
path = os.path.join(OUT, "tokenizer_expected.json")

texts = ["hello world", "Grüße, 世界! 123\n\tcode()", "   spaces  "]
expected = [{"text": t, "ids": tok.encode(t).ids} for t in texts]
for e in expected:
    assert tok.decode(e["ids"]) == e["text"]
with open(os.path.join(OUT, "tokenizer_expected.json"), "w") as f:
    json.dump(expected, f, ensure_ascii=False, indent=1)
print(path, [len(e["ids"]) for e in expected])
