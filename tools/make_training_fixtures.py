#!/usr/bin/env python3
"""Reference fixture for quantization-aware training: one training step of a tiny random
BitNet b1.58 in transformers' `autobitlinear` online mode (latent float weights, WeightQuant and
ActQuant in the forward pass, straight-through gradients).

Run by hand (not by CI); the output is small and committed:

    TORCHDYNAMO_DISABLE=1 /tmp/refvenv/bin/python tools/make_training_fixtures.py [OUT_DIR]

OUT_DIR defaults to crates/bitnet-training/tests/fixtures/qat_step. It holds:

  config.json          the model config (autobitlinear + online)
  model.safetensors    the latent float32 weights before the step
  expected.safetensors input_ids [B, T] (i64), loss [1], grad.<param> for every parameter
                       (tied: model.embed_tokens.weight carries the lm_head contribution),
                       loss_after [1] (same batch, after one AdamW step)
  meta.json            optimizer settings and the parameter groups

The loss is transformers' causal-LM loss with labels = input_ids (shifted inside, mean over
B*(T-1) predictions). AdamW: lr 1e-3, betas (0.9, 0.999), eps 1e-8; weight decay 0.1 on the
ternary linear weights, none on norms and embeddings (two parameter groups).
"""

import json
import math
import os
import shutil
import sys

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch
from safetensors.torch import save_file
from transformers import BitNetConfig, BitNetForCausalLM
from transformers.integrations.bitnet import AutoBitLinear

torch.set_num_threads(1)

SEED = 77
BATCH, SEQ = 2, 16
LR, BETAS, EPS, WD = 1e-3, (0.9, 0.999), 1e-8, 0.1

CONFIG = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    hidden_act="relu2",
    rms_norm_eps=1e-5,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    max_position_embeddings=64,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=None,
    attention_dropout=0.0,
)
QCONF = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"}
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def is_linear(name):
    return name.removesuffix(".weight").endswith(LINEARS)


def latent(cfg):
    shapes = {k: tuple(v.shape) for k, v in BitNetForCausalLM(cfg).state_dict().items()}
    shapes.pop("lm_head.weight", None)
    gen = torch.Generator().manual_seed(SEED)
    out = {}
    for name in sorted(shapes):
        shp = shapes[name]
        if name == "model.embed_tokens.weight":
            w = torch.randn(shp, generator=gen) * 0.5
        elif name.endswith("norm.weight"):
            w = 1.0 + (torch.rand(shp, generator=gen) * 2 - 1) * 0.2
        else:
            w = torch.randn(shp, generator=gen) / math.sqrt(shp[1])
        out[name] = w.float().contiguous()
    return out


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        here, "..", "crates", "bitnet-training", "tests", "fixtures", "qat_step"))
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    cfg = BitNetConfig(**CONFIG)
    cfg.dtype = torch.float32
    cfg.quantization_config = dict(QCONF)
    weights = latent(cfg)
    cfg.save_pretrained(out)
    save_file(weights, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})

    model = BitNetForCausalLM.from_pretrained(out, attn_implementation="eager")
    for name, mod in model.named_modules():
        if name.endswith(LINEARS):
            assert type(mod) is AutoBitLinear and mod.online_quant, name
    model.train()

    gen = torch.Generator().manual_seed(SEED + 1)
    ids = torch.randint(0, CONFIG["vocab_size"], (BATCH, SEQ), generator=gen, dtype=torch.int64)
    loss = model(ids, labels=ids, use_cache=False).loss
    loss.backward()
    params = dict(model.named_parameters())
    exp = {"input_ids": ids, "loss": loss.detach().reshape(1).float()}
    for name, p in params.items():
        assert p.grad is not None, name
        exp["grad." + name] = p.grad.detach().float().contiguous()

    decay = [p for n, p in params.items() if is_linear(n)]
    no_decay = [p for n, p in params.items() if not is_linear(n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=LR, betas=BETAS, eps=EPS)
    opt.step()
    with torch.no_grad():
        after = model(ids, labels=ids, use_cache=False).loss
    exp["loss_after"] = after.reshape(1).float()
    save_file(exp, os.path.join(out, "expected.safetensors"))
    meta = {"lr": LR, "betas": list(BETAS), "eps": EPS, "weight_decay": WD,
            "decay": [n for n in params if is_linear(n)],
            "no_decay": [n for n in params if not is_linear(n)],
            "loss": loss.item(), "loss_after": after.item()}
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(json.dumps({"loss": loss.item(), "loss_after": after.item(), "params": len(params)}))


if __name__ == "__main__":
    main()
