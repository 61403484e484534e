#!/usr/bin/env python3
"""Training throughput side by side: `bitnet train` (this repo) against PyTorch CPU running
transformers' BitNetForCausalLM in `autobitlinear` online mode (the QAT reference), same
config, same batch and sequence length, same thread count, alternating A B A B.

    TORCHDYNAMO_DISABLE=1 /tmp/refvenv/bin/python tools/bench_training.py \
        --bitnet target/release/bitnet --corpus kjv.txt --tokenizer tok/tokenizer.json \
        [--threads 2] [--steps 8] [--warmup 3] [--rounds 5]

Both train with AdamW, clip 1.0, cross-entropy on next tokens. Reported: median tokens/s
over the steps after the warmup (per round, and the medians over the rounds: on a shared
machine one engine's single run can be 20% off, so the ratio is the median of the rounds' ratios),
the peak resident memory of each process
(/usr/bin/time for bitnet, getrusage in the PyTorch child), and our process's
user and system seconds. TORCHDYNAMO_DISABLE=1 runs
transformers' @torch.compile quantizers eagerly (the compile costs ~20 s per shape).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

CONFIG = dict(vocab_size=2048, hidden_size=384, intermediate_size=1024, num_hidden_layers=6,
              num_attention_heads=6, num_key_value_heads=6, max_position_embeddings=256)
BATCH, SEQ = 4, 128


def torch_child(threads, steps, warmup):
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    import torch
    from transformers import BitNetConfig, BitNetForCausalLM
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = BitNetConfig(**CONFIG, hidden_act="relu2", tie_word_embeddings=True,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    cfg.quantization_config = {"quant_method": "bitnet", "linear_class": "autobitlinear",
                               "quantization_mode": "online"}
    with tempfile.TemporaryDirectory() as d:
        BitNetForCausalLM(BitNetConfig(**{k: v for k, v in cfg.to_dict().items()
                                          if k != "quantization_config"})).save_pretrained(d)
        cfg.save_pretrained(d)
        model = BitNetForCausalLM.from_pretrained(d)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    times = []
    for i in range(warmup + steps):
        ids = torch.randint(0, CONFIG["vocab_size"], (BATCH, SEQ))
        t0 = time.perf_counter()
        loss = model(ids, labels=ids, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    tps = [BATCH * SEQ / t for t in times[warmup:]]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"tokens_per_s": statistics.median(tps), "peak_mb": peak_mb, "params": n_params,
                      "torch": torch.__version__, "threads": torch.get_num_threads()}))


def bitnet_run(exe, corpus, tokenizer, threads, steps, warmup):
    with tempfile.TemporaryDirectory() as d:
        toml = f"""
[model]
hidden_size = {CONFIG['hidden_size']}
intermediate_size = {CONFIG['intermediate_size']}
num_layers = {CONFIG['num_hidden_layers']}
num_heads = {CONFIG['num_attention_heads']}
num_kv_heads = {CONFIG['num_key_value_heads']}
vocab_size = {CONFIG['vocab_size']}
max_position_embeddings = {CONFIG['max_position_embeddings']}
[data]
files = ["{os.path.abspath(corpus)}"]
tokenizer = "{os.path.abspath(tokenizer)}"
seq_len = {SEQ}
val_fraction = 0.01
[optim]
lr = 1e-3
weight_decay = 0.1
[train]
steps = {warmup + steps}
batch_size = {BATCH}
clip_norm = 1.0
eval_every = 0
eval_sequences = 1
checkpoint_every = 0
keep_last = 1
threads = {threads}
out_dir = "{d}/run"
"""
        path = os.path.join(d, "train.toml")
        with open(path, "w") as f:
            f.write(toml)
        r = subprocess.run(["/usr/bin/time", "-f", "PEAK_KB %M USER_S %U SYS_S %S", exe, "train", "--config", path,
                            "--sample-prompt", "And"], capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"bitnet train failed:\n{r.stderr[-3000:]}")
        usage = [l for l in r.stderr.splitlines() if l.startswith("PEAK_KB")][-1].split()
        peak_kb, user_s, sys_s = int(usage[1]), float(usage[3]), float(usage[5])
        rows = [json.loads(l) for l in open(os.path.join(d, "run", "metrics.jsonl"))]
        tps = [r["tokens_per_s"] for r in rows[warmup:]]
        params = [l for l in r.stderr.splitlines() if l.startswith("model:")]
        return {"tokens_per_s": statistics.median(tps), "peak_mb": peak_kb / 1024,
                "user_s": user_s, "sys_s": sys_s, "model": params[0] if params else ""}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bitnet", default="target/release/bitnet")
    ap.add_argument("--corpus", required=False)
    ap.add_argument("--tokenizer", required=False)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1,
                    help="alternate the two engines this many times; the ratio is the median of the rounds'")
    ap.add_argument("--torch-child", action="store_true")
    a = ap.parse_args()
    if a.torch_child:
        torch_child(a.threads, a.steps, a.warmup)
        return
    def torch_run():
        r = subprocess.run([sys.executable, __file__, "--torch-child", "--threads", str(a.threads),
                            "--steps", str(a.steps), "--warmup", str(a.warmup)],
                           capture_output=True, text=True,
                           env={**os.environ, "TORCHDYNAMO_DISABLE": "1"})
        if r.returncode != 0:
            sys.exit(f"torch child failed:\n{r.stderr[-3000:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])

    print(f"config {CONFIG}, batch {BATCH} x seq {SEQ}, threads {a.threads}, "
          f"median of {a.steps} steps after {a.warmup} warmup, {a.rounds} round(s) A B A B")
    pairs = []
    for i in range(a.rounds):
        ours = bitnet_run(a.bitnet, a.corpus, a.tokenizer, a.threads, a.steps, a.warmup)
        ref = torch_run()
        pairs.append((ours, ref))
        print(f"round {i + 1}: bitnet-rust {ours['tokens_per_s']:6.0f}, pytorch {ref['tokens_per_s']:6.0f} "
              f"tokens/s, ratio {ours['tokens_per_s'] / ref['tokens_per_s']:.2f}x", flush=True)
    ours, ref = pairs[-1]
    med = lambda xs: statistics.median(xs)
    our_ts = med([o["tokens_per_s"] for o, _ in pairs])
    ref_ts = med([r["tokens_per_s"] for _, r in pairs])
    ratios = sorted(o["tokens_per_s"] / r["tokens_per_s"] for o, r in pairs)
    print(f"bitnet-rust : {our_ts:8.0f} tokens/s, peak RSS {max(o['peak_mb'] for o, _ in pairs):7.0f} MB  ({ours['model']})")
    print(f"              last round's whole process: user {ours['user_s']:.1f} s, sys {ours['sys_s']:.1f} s "
          f"(system time: start-up page faults; 5 and 25 steps fault the same pages)")
    print(f"pytorch     : {ref_ts:8.0f} tokens/s, peak RSS {max(r['peak_mb'] for _, r in pairs):7.0f} MB  "
          f"(torch {ref['torch']}, {ref['params'] / 1e6:.2f}M params)")
    spread = f" (rounds {ratios[0]:.2f}-{ratios[-1]:.2f}x)" if len(ratios) > 1 else ""
    print(f"ratio       : {med(ratios):.2f}x median of the rounds' ratios{spread}, "
          f"{our_ts / ref_ts:.2f}x ratio of the medians")

if __name__ == "__main__":
    main()
