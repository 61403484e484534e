#!/usr/bin/env python3
"""Train a small *float* BitNet (transformers' BitNetForCausalLM with plain nn.Linear, no
quantization) on the KJV text, as the stand-in for a real float checkpoint that this
offline machine cannot download. `bitnet convert` then ternarizes it, and
`bitnet perplexity` reports what each conversion method costs on held-out text
(README "Quantization quality on a trained float model").

    sh tools/fetch_kjv_corpus.sh /tmp/kjv.txt
    TORCHDYNAMO_DISABLE=1 /tmp/refvenv/bin/python tools/train_float_reference.py \
        --corpus /tmp/kjv.txt --tokenizer models/bitnet-kjv-5m/tokenizer.json \
        --out /tmp/kjv-float [--minutes 20] [--threads 2]

Writes OUT/{config.json, model.safetensors (bf16), tokenizer.json} (an HF float BitNet
checkpoint), OUT/heldout.txt (the last 2% of verses, never trained on), OUT/calib.txt
(verses from the training split, for calibration), and OUT/reference.json: PyTorch's own
perplexity of the saved bf16 weights on heldout.txt, with the chunking `bitnet perplexity
--ctx 256` uses (chunks of 256 tokens, the second half of each scored), to check our
engine's float path against.
"""

import argparse
import json
import math
import os
import shutil
import time

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import BitNetConfig, BitNetForCausalLM  # noqa: E402

CTX = 256


def chunked_perplexity(model, ids):
    """llama.cpp's chunking: chunks of CTX, logits at positions CTX/2 .. CTX-2 score the
    next token."""
    nll, count = 0.0, 0
    with torch.no_grad():
        for c in range(len(ids) // CTX):
            x = torch.tensor(ids[c * CTX:(c + 1) * CTX]).unsqueeze(0)
            logp = torch.log_softmax(model(x).logits[0].float(), dim=-1)
            for pos in range(CTX // 2, CTX - 1):
                nll -= logp[pos, x[0, pos + 1]].item()
                count += 1
    return math.exp(nll / count), count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    # 768 = 3 x 256: every row length is a multiple of the TQ1_0/TQ2_0 block, so every
    # target format holds every layer without an F16 fallback.
    ap.add_argument("--intermediate", type=int, default=768)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)

    lines = [l for l in open(args.corpus, encoding="utf-8").read().split("\n") if l.strip()]
    cut = len(lines) - len(lines) // 50
    train_text, held_text = "\n".join(lines[:cut]) + "\n", "\n".join(lines[cut:]) + "\n"
    with open(os.path.join(args.out, "heldout.txt"), "w", encoding="utf-8") as f:
        f.write(held_text)
    with open(os.path.join(args.out, "calib.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines[cut - 2000:cut]) + "\n")
    shutil.copy(args.tokenizer, os.path.join(args.out, "tokenizer.json"))

    tok = Tokenizer.from_file(args.tokenizer)
    ids = tok.encode(train_text).ids
    held_ids = tok.encode(held_text).ids
    data = torch.tensor(ids, dtype=torch.long)
    print(f"{len(ids)} training tokens, {len(held_ids)} held-out tokens", flush=True)

    cfg = BitNetConfig(vocab_size=tok.get_vocab_size(), hidden_size=256, intermediate_size=args.intermediate,
                       num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=4,
                       max_position_embeddings=CTX, hidden_act="relu2", tie_word_embeddings=True,
                       rms_norm_eps=1e-5, bos_token_id=None, eos_token_id=None,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    model = BitNetForCausalLM(cfg)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}], lr=3e-3, betas=(0.9, 0.95))
    batch, seq = 16, CTX
    budget = args.minutes * 60.0
    start, step = time.time(), 0
    gen = torch.Generator().manual_seed(args.seed)
    while True:
        frac = (time.time() - start) / budget
        if frac >= 1.0:
            break
        lr = 3e-3 * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=gen)
        x = torch.stack([data[s:s + seq] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0:
            print(f"step {step} loss {loss.item():.3f} lr {lr:.2e} {time.time() - start:.0f}s",
                  flush=True)
        step += 1

    model.eval()
    model = model.to(torch.bfloat16)
    model.save_pretrained(args.out, safe_serialization=True)
    ppl, count = chunked_perplexity(model.float(), held_ids)
    ref = {"steps": step, "train_tokens_seen": step * batch * seq, "heldout_tokens": len(held_ids),
           "ctx": CTX, "scored": count, "perplexity_bf16_weights": ppl}
    with open(os.path.join(args.out, "reference.json"), "w") as f:
        json.dump(ref, f, indent=2)
    print(json.dumps(ref), flush=True)


if __name__ == "__main__":
    main()
