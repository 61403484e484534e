#!/usr/bin/env python3
"""Train a small byte-level BPE tokenizer.json (GPT-2 style pre-tokenizer and
decoder) on a text corpus with HF `tokenizers`, for the example training run.

    /tmp/refvenv/bin/python tools/train_bpe_tokenizer.py CORPUS.txt OUT_DIR [VOCAB]

Writes OUT_DIR/tokenizer.json and OUT_DIR/tokenizer_config.json. Specials:
<|endoftext|> (id 0, used as EOS between documents and as BOS).
"""
import json
import os
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

corpus, out = sys.argv[1], sys.argv[2]
vocab = int(sys.argv[3]) if len(sys.argv) > 3 else 2048
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
tok.train([corpus], trainer)
os.makedirs(out, exist_ok=True)
tok.save(os.path.join(out, "tokenizer.json"))
with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
    json.dump({"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
               "model_max_length": 256, "tokenizer_class": "PreTrainedTokenizerFast"}, f, indent=1)
ids = tok.encode(open(corpus).read()).ids
print(json.dumps({"vocab": tok.get_vocab_size(), "tokens": len(ids)}))
