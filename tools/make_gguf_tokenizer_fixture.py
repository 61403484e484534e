#!/usr/bin/env python3
"""A small GGUF tokenizer written by llama.cpp's own `gguf` Python package, so the
Rust GGUF tokenizer (crates/bitnet-models/src/tokenizer/gguf.rs) is checked
against the real key names and value types, not only our writer's.

The tokenizer: one token per byte (GPT-2 byte alphabet), a few merges, two
control tokens (BOS/EOS) and one user-defined token, with Llama-3's split
pre-tokenizer (`tokenizer.ggml.pre = "llama-bpe"`). Its equivalent HF tokenizer,
built with `tokenizers`, gives the expected ids. The GGUF-writing calls are the
ones convert_hf_to_gguf.py makes for byte-level BPE vocabularies.

    /tmp/refvenv/bin/pip install gguf==0.19.0
    /tmp/refvenv/bin/python tools/make_gguf_tokenizer_fixture.py

Writes crates/bitnet-models/tests/fixtures/gguf_tokenizer/{tiny_bpe.gguf,expected.json}.
"""

import importlib.metadata
import json
import os

import gguf
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from tokenizers import Regex

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "crates", "bitnet-models", "tests", "fixtures", "gguf_tokenizer")
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# GPT-2's byte-to-unicode table, in byte order, so token id == byte value.
bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
    list(range(ord("®"), ord("ÿ") + 1))
cs = bs[:]
n = 0
for b in range(256):
    if b not in bs:
        bs.append(b)
        cs.append(256 + n)
        n += 1
byte_to_char = {b: chr(c) for b, c in zip(bs, cs)}
vocab = {byte_to_char[b]: b for b in range(256)}
MERGES = [("h", "e"), ("l", "l"), ("he", "ll"), ("Ġ", "w"), ("o", "r"), ("Ġw", "or"),
          ("1", "2"), ("12", "3"), ("Ġ", "Ġ"), ("e", "s"), ("Ã", "©")]
for a, b in MERGES:
    vocab[a + b] = len(vocab)
ADDED = [("<|bos|>", True), ("<|eos|>", True), ("<user>", False)]

tok = Tokenizer(models.BPE(vocab=dict(vocab), merges=list(MERGES), ignore_merges=True))
tok.pre_tokenizer = pre_tokenizers.Sequence([
    pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated"),
    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
])
tok.decoder = decoders.ByteLevel()
for content, special in ADDED:
    tok.add_tokens([AddedToken(content, special=special, normalized=False)])
bos, eos = tok.token_to_id("<|bos|>"), tok.token_to_id("<|eos|>")
tok.post_processor = processors.TemplateProcessing(
    single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B", special_tokens=[("<|bos|>", bos)])

n_vocab = tok.get_vocab_size(with_added_tokens=True)
id_to_token = {i: t for t, i in tok.get_vocab(with_added_tokens=True).items()}
added = {c: s for c, s in ADDED}
tokens, types = [], []
for i in range(n_vocab):
    t = id_to_token[i]
    tokens.append(t)
    if t in added:
        types.append(gguf.TokenType.CONTROL if added[t] else gguf.TokenType.USER_DEFINED)
    else:
        types.append(gguf.TokenType.NORMAL)

os.makedirs(OUT, exist_ok=True)
w = gguf.GGUFWriter(os.path.join(OUT, "tiny_bpe.gguf"), "llama")
w.add_tokenizer_model("gpt2")
w.add_tokenizer_pre("llama-bpe")
w.add_token_list(tokens)
w.add_token_types(types)
w.add_token_merges([f"{a} {b}" for a, b in MERGES])
w.add_bos_token_id(bos)
w.add_eos_token_id(eos)
w.add_add_bos_token(True)
w.add_chat_template("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()

texts = ["hello world", "Hello, WORLD! 123456 hell held", "café é 😀 世界",
         "<|bos|>x<|eos|> <user>y", "  spaces\n\n\ttabs 12 123 1234", ""]
cases = []
for t in texts:
    enc = tok.encode(t)
    cases.append({"text": t, "ids": enc.ids, "decoded": tok.decode(enc.ids, skip_special_tokens=False)})
with open(os.path.join(OUT, "expected.json"), "w", encoding="utf-8") as f:
    json.dump({"gguf_py_version": importlib.metadata.version("gguf"),
               "bos": bos, "eos": eos, "cases": cases}, f, ensure_ascii=False, indent=1)
    f.write("\n")
print(OUT, n_vocab, "tokens", [len(c["ids"]) for c in cases])
