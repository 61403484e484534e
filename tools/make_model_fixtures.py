#!/usr/bin/env python3
"""Generate whole-model reference fixtures (tiny random BitNet b1.58 models) from
HuggingFace transformers' own `BitNetForCausalLM`.

Run by hand (not by CI); the output is small and committed:

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch transformers accelerate safetensors numpy
    TORCHDYNAMO_DISABLE=1 /tmp/refvenv/bin/python tools/make_model_fixtures.py [OUT_DIR]

OUT_DIR defaults to crates/bitnet-inference/tests/fixtures/tiny in this repository.
TORCHDYNAMO_DISABLE=1 makes the @torch.compile-decorated quantizers in
transformers/integrations/bitnet.py run eagerly (same numbers, no 20 s compile per call).

One directory per variant, each loadable by `BitNetForCausalLM.from_pretrained(dir)`:

  float/                  no quantization_config: plain float32 model (the latent weights)
  online/                 autobitlinear + online : latent float32 weights, WeightQuant per forward
  autobitlinear_offline/  autobitlinear + offline: packed uint8 [out/4, in] + weight_scale = mean|W|
  bitlinear_offline/      bitlinear + offline    : packed uint8 [out/4, in] + weight_scale = 1/mean|W|
  online_untied/          as online/, tie_word_embeddings=false and a separate lm_head.weight

All variants derive from the SAME latent weights (online_untied adds an lm_head), so the
three quantized variants hold identical ternary codes. Each directory holds config.json,
model.safetensors and expected.safetensors (reference outputs computed by loading the
directory back with from_pretrained, i.e. exactly what a user of transformers gets).
The script also writes README.md next to the variant directories.
"""

import json
import math
import os
import shutil
import sys

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import numpy as np
import torch
import torch.nn as nn
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import BitNetConfig, BitNetForCausalLM
from transformers.integrations.bitnet import (
    AutoBitLinear,
    BitLinear,
    WeightQuant,
    pack_weights,
    unpack_weights,
)

torch.set_num_threads(1)  # deterministic CPU reduction order

# ----------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------

SEED = 1015  # latent weights (picked from 1000..1015: largest min greedy-step margin, all variants)
PROMPT_SEED = 4321  # prompt token ids
PROMPT_LENS = [1, 7, 19]
GREEDY_PROMPT = 1  # greedy continuation from prompt p1
GREEDY_NEW = 8
ATTN_IMPL = "eager"  # the explicit-math attention path (f32 softmax); sdpa is also checked

# Init scales (chosen so logits have spread > 1 and non-tiny top-1/top-2 margins).
EMB_STD = 1.0  # embeddings (and the untied lm_head). Normed hidden has RMS ~1, 64 dims
LIN_GAIN = 1.0  # q/k/v/gate/up weights ~ N(0, (LIN_GAIN / sqrt(in_features))^2)
# o_proj/down_proj write into the residual stream. With tied embeddings the logit of a token
# whose embedding sits in the residual stream is ~|e|^2, so a model whose residual is dominated
# by the input embedding just repeats its last input token. A larger gain here makes the
# layers dominate the residual stream and the greedy output non-trivial.
RESID_GAIN = 8.0
NORM_SPREAD = 0.25  # RMSNorm weights ~ U(1 - NORM_SPREAD, 1 + NORM_SPREAD)

BASE_CONFIG = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,  # head_dim 16 -> k/v projections have out dim 32
    hidden_act="relu2",
    rms_norm_eps=1e-5,
    # transformers 5.x spells RoPE as rope_parameters (a legacy top-level rope_theta kwarg is
    # converted into this on construction and is NOT written back to config.json).
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    max_position_embeddings=128,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=None,
)

QCONF = {
    "online": {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"},
    "autobitlinear_offline": {"quant_method": "bitnet", "linear_class": "autobitlinear",
                              "quantization_mode": "offline"},
    "bitlinear_offline": {"quant_method": "bitnet", "linear_class": "bitlinear", "quantization_mode": "offline"},
}

VARIANTS = ["float", "online", "autobitlinear_offline", "bitlinear_offline", "online_untied"]
QUANTIZED = ["online", "autobitlinear_offline", "bitlinear_offline"]

LINEAR_SUFFIXES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                   "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def make_config(variant: str) -> BitNetConfig:
    kw = dict(BASE_CONFIG)
    if variant == "online_untied":
        kw["tie_word_embeddings"] = False
    cfg = BitNetConfig(**kw)
    cfg.dtype = torch.float32  # saved as "dtype": "float32" (transformers 5 no longer writes torch_dtype)
    qc = QCONF.get("online" if variant == "online_untied" else variant)
    if qc is not None:
        cfg.quantization_config = dict(qc)
    return cfg


# ----------------------------------------------------------------------------------------
# Latent weights
# ----------------------------------------------------------------------------------------

def is_linear(name: str) -> bool:
    return name.startswith("model.layers.") and name.removesuffix(".weight").endswith(LINEAR_SUFFIXES)


def latent_weights(with_lm_head: bool) -> dict:
    """Seeded latent float32 weights, keyed by the HF state-dict names (lm_head only if untied).

    Names and shapes come from an un-quantized BitNetForCausalLM built from the config.
    Tensors are drawn in a fixed (sorted-name) order from one generator, so adding the untied
    lm_head (drawn last, from its own generator) does not change the shared weights.
    """
    cfg = make_config("float")
    shapes = {k: tuple(v.shape) for k, v in BitNetForCausalLM(cfg).state_dict().items()}
    shapes.pop("lm_head.weight", None)  # tied: not stored
    gen = torch.Generator().manual_seed(SEED)
    out = {}
    for name in sorted(shapes):
        shp = shapes[name]
        if name == "model.embed_tokens.weight":
            w = torch.randn(shp, generator=gen) * EMB_STD
        elif name.endswith("norm.weight"):  # every RMSNorm (input/post/attn_sub/ffn_sub/final)
            w = 1.0 + (torch.rand(shp, generator=gen) * 2 - 1) * NORM_SPREAD
        elif is_linear(name):
            gain = RESID_GAIN if name.endswith(("o_proj.weight", "down_proj.weight")) else LIN_GAIN
            w = torch.randn(shp, generator=gen) * (gain / math.sqrt(shp[1]))
        else:
            raise ValueError(f"unexpected parameter {name}")
        out[name] = w.float().contiguous()
    if with_lm_head:
        g2 = torch.Generator().manual_seed(SEED + 1)
        out["lm_head.weight"] = (torch.randn(shapes["model.embed_tokens.weight"], generator=g2)
                                 * EMB_STD).float().contiguous()
    return out


def ternary(w: torch.Tensor):
    """Ternary codes and mean|W| exactly as transformers' WeightQuant computes them."""
    mean = w.abs().mean().clamp(min=1e-5)  # f32
    scale = 1.0 / w.abs().mean().clamp_(min=1e-5)  # the same expression as WeightQuant.forward
    codes = (w * scale).round().clamp(-1, 1)
    # WeightQuant (what the online variant runs) dequantizes to exactly codes / scale
    assert torch.equal(WeightQuant.apply(w), codes / scale)
    return codes.to(torch.int8), mean.reshape(1).float(), scale.reshape(1).float()


def variant_state_dict(variant: str, latent: dict) -> dict:
    if variant in ("float", "online", "online_untied"):
        return {k: v.clone() for k, v in latent.items()}
    sd = {}
    for name, w in latent.items():
        if not is_linear(name):
            sd[name] = w.clone()
            continue
        codes, mean, scale = ternary(w)
        packed = pack_weights(codes.clone())  # pack_weights adds 1 in place: pass a clone
        assert packed.dtype == torch.uint8 and packed.shape == (math.ceil(w.shape[0] / 4), w.shape[1])
        assert torch.equal(unpack_weights(packed, dtype=torch.float32)[: w.shape[0]], codes.float())
        sd[name] = packed
        base = name.removesuffix(".weight")
        # weight_scale: shape [1], the model dtype (f32 here; bf16 in 2B-4T)
        sd[base + ".weight_scale"] = mean if variant == "autobitlinear_offline" else scale
    return sd


# ----------------------------------------------------------------------------------------
# Writing and loading back
# ----------------------------------------------------------------------------------------

def write_variant(d: str, variant: str, latent: dict):
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    make_config(variant).save_pretrained(d)  # writes config.json only
    sd = variant_state_dict(variant, latent)
    save_file({k: v.contiguous() for k, v in sorted(sd.items())}, os.path.join(d, "model.safetensors"),
              metadata={"format": "pt"})
    return sd


def load_variant(d: str, variant: str, attn=ATTN_IMPL) -> BitNetForCausalLM:
    model, info = BitNetForCausalLM.from_pretrained(d, attn_implementation=attn, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k != "error_msgs"} | (
        {"error_msgs": info["error_msgs"]} if info.get("error_msgs") else {})
    assert not bad, f"{variant}: loading info not clean: {bad}"
    model.eval()
    check_loaded(model, variant)
    return model


def check_loaded(model: BitNetForCausalLM, variant: str):
    """Assert the modules transformers built match what the variant is meant to run."""
    for name, mod in model.named_modules():
        if not name.endswith(LINEAR_SUFFIXES):
            continue
        if variant == "float":
            assert type(mod) is nn.Linear, (name, type(mod))
        elif variant in ("online", "online_untied"):
            assert type(mod) is AutoBitLinear and mod.online_quant, (name, type(mod))
            assert mod.weight.dtype == torch.float32
        elif variant == "autobitlinear_offline":
            assert type(mod) is AutoBitLinear and not mod.online_quant, (name, type(mod))
            # BitNetDeserialize unpacked the uint8 checkpoint into float ternary values
            assert mod.weight.dtype == torch.float32 and mod.weight.shape == (mod.out_features, mod.in_features)
            assert set(mod.weight.unique().tolist()) <= {-1.0, 0.0, 1.0}
        elif variant == "bitlinear_offline":
            assert type(mod) is BitLinear, (name, type(mod))
            assert mod.weight.dtype == torch.uint8 and mod.weight.shape == (mod.out_features // 4, mod.in_features)
    assert type(model.lm_head) is nn.Linear, "lm_head must never be quantized"
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tied == model.config.tie_word_embeddings, (variant, tied)


# ----------------------------------------------------------------------------------------
# Reference outputs
# ----------------------------------------------------------------------------------------

def make_prompts():
    gen = torch.Generator().manual_seed(PROMPT_SEED)
    return [torch.randint(3, 256, (n,), generator=gen, dtype=torch.int64) for n in PROMPT_LENS]


def margins(logits: torch.Tensor) -> torch.Tensor:
    top2 = logits.topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


@torch.no_grad()
def reference_outputs(model: BitNetForCausalLM, prompts) -> dict:
    out = {}
    # hidden state after decoder layer 0, captured directly with a hook as a cross-check
    captured = {}
    h = model.model.layers[0].register_forward_hook(lambda m, a, o: captured.__setitem__("h", o))
    for i, ids in enumerate(prompts):
        res = model(ids[None], output_hidden_states=True, use_cache=False)
        out[f"ids_p{i}"] = ids.clone()
        out[f"logits_p{i}"] = res.logits[0].float().contiguous()
        if i == GREEDY_PROMPT:
            # (embeddings, after layer 0, ..., and LAST = after the final model.norm)
            hs = res.hidden_states
            assert len(hs) == model.config.num_hidden_layers + 1
            assert torch.equal(hs[0][0], model.model.embed_tokens(ids))
            h0 = captured["h"][0] if isinstance(captured["h"], tuple) else captured["h"]
            assert torch.equal(hs[1], h0), "hidden_states[1] is not layer 0's output"
            out[f"hidden1_p{i}"] = hs[1][0].float().contiguous()
    h.remove()

    # greedy decode with the KV cache, as generate() does it
    ids = prompts[GREEDY_PROMPT][None]
    seq = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=GREEDY_NEW, pad_token_id=BASE_CONFIG["eos_token_id"])
    new = seq[0, ids.shape[1]:]
    out[f"greedy_p{GREEDY_PROMPT}"] = new.clone()
    # cross-check: greedy without a cache (full forward each step) gives the same ids
    cur = ids
    for _ in range(len(new)):
        nxt = model(cur, use_cache=False).logits[0, -1].argmax()
        cur = torch.cat([cur, nxt.view(1, 1)], dim=1)
    nocache_ok = torch.equal(cur[0, ids.shape[1]:], new)
    # margins at the greedy decision positions (from a full forward over the whole sequence)
    full = model(seq, use_cache=False).logits[0]
    greedy_margins = margins(full[ids.shape[1] - 1: seq.shape[1] - 1])
    return out, {"greedy_nocache_agrees": nocache_ok, "greedy_margins": greedy_margins,
                 "greedy_len": len(new)}


# ----------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------

def describe_safetensors(path: str):
    rows = []
    with safe_open(path, "pt") as f:
        for k in f.keys():  # safetensors stores keys sorted
            t = f.get_slice(k)
            rows.append((k, t.get_dtype(), list(t.get_shape())))
    return rows


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out_dir = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else
                              os.path.join(here, "..", "crates", "bitnet-inference", "tests", "fixtures", "tiny"))
    os.makedirs(out_dir, exist_ok=True)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"TORCHDYNAMO_DISABLE={os.environ.get('TORCHDYNAMO_DISABLE')}, out {out_dir}")

    latent = latent_weights(with_lm_head=False)
    latent_untied = latent_weights(with_lm_head=True)
    for k in latent:
        assert torch.equal(latent[k], latent_untied[k])
    prompts = make_prompts()

    results, stats, layouts, sizes = {}, {}, {}, {}
    for v in VARIANTS:
        d = os.path.join(out_dir, v)
        write_variant(d, v, latent_untied if v == "online_untied" else latent)
        model = load_variant(d, v)
        exp, st = reference_outputs(model, prompts)

        # sdpa attention (transformers' default on CPU) must agree closely with eager
        m_sdpa = load_variant(d, v, attn="sdpa")
        with torch.no_grad():
            st["sdpa_vs_eager"] = max((m_sdpa(p[None]).logits[0] - exp[f"logits_p{i}"]).abs().max().item()
                                      for i, p in enumerate(prompts))
        st["min_margin"] = min(margins(exp[f"logits_p{i}"]).min().item() for i in range(len(prompts)))
        st["logit_spread"] = min(exp[f"logits_p{i}"].std(dim=-1).min().item() for i in range(len(prompts)))
        st["logit_absmax"] = max(exp[f"logits_p{i}"].abs().max().item() for i in range(len(prompts)))

        path = os.path.join(d, "expected.safetensors")
        save_file(exp, path, metadata={"generator": "tools/make_model_fixtures.py",
                                       "torch": torch.__version__, "transformers": transformers.__version__,
                                       "attn_implementation": ATTN_IMPL})
        for f in os.listdir(d):
            os.chmod(os.path.join(d, f), 0o644)  # safetensors writes 0600
        back = load_file(path)
        assert all(torch.equal(back[k], exp[k]) for k in exp)
        results[v], stats[v] = exp, st
        layouts[v] = describe_safetensors(os.path.join(d, "model.safetensors"))
        sizes[v] = {f: os.path.getsize(os.path.join(d, f)) for f in sorted(os.listdir(d))}
        total = sum(sizes[v].values())
        assert total < 600 * 1024, (v, total)
        gm = st["greedy_margins"]
        print(f"{v:22s} greedy={exp['greedy_p1'].tolist()} (no-cache agrees: {st['greedy_nocache_agrees']}) "
              f"min greedy margin={gm.min().item():.4f} min margin all pos={st['min_margin']:.4f} "
              f"min per-pos std={st['logit_spread']:.3f} |logit|max={st['logit_absmax']:.2f} "
              f"sdpa-vs-eager={st['sdpa_vs_eager']:.2e} size={total} B")

    # the three quantized variants must hold the same ternary codes
    sd_auto = load_file(os.path.join(out_dir, "autobitlinear_offline", "model.safetensors"))
    sd_bl = load_file(os.path.join(out_dir, "bitlinear_offline", "model.safetensors"))
    for k in sd_auto:
        if k.endswith(".weight_scale"):
            # mean|W| vs 1/mean|W|: reciprocal up to f32 rounding
            assert abs(sd_auto[k].item() * sd_bl[k].item() - 1.0) < 1e-6
        else:
            assert torch.equal(sd_auto[k], sd_bl[k]), k

    # cross-variant logit differences
    def maxdiff(a, b):
        return max((results[a][f"logits_p{i}"] - results[b][f"logits_p{i}"]).abs().max().item()
                   for i in range(len(prompts)))

    pairs = [("online", "autobitlinear_offline"), ("online", "bitlinear_offline"),
             ("autobitlinear_offline", "bitlinear_offline"), ("float", "online")]
    diffs = {p: maxdiff(*p) for p in pairs}
    print("max |logit diff| over all prompts/positions:")
    for (a, b), x in diffs.items():
        print(f"  {a:22s} vs {b:22s} {x:.3e}")
    same_greedy = {v: torch.equal(results[v]["greedy_p1"], results["online"]["greedy_p1"]) for v in QUANTIZED}
    print(f"greedy_p1 identical across quantized variants: {same_greedy}")

    write_readme(out_dir, prompts, results, stats, layouts, sizes, diffs, same_greedy)


def write_readme(out_dir, prompts, results, stats, layouts, sizes, diffs, same_greedy):
    cfg_json = {v: json.load(open(os.path.join(out_dir, v, "config.json"))) for v in VARIANTS}
    L = []
    L.append("# Tiny BitNet whole-model reference fixtures\n")
    L.append("Generated by `tools/make_model_fixtures.py` (run by hand, see its header) from HuggingFace "
             f"transformers' own `BitNetForCausalLM`: transformers {transformers.__version__}, "
             f"torch {torch.__version__} (CPU, float32, `TORCHDYNAMO_DISABLE=1`, 1 thread, "
             f"`attn_implementation=\"{ATTN_IMPL}\"`). Every directory is loadable by "
             "`BitNetForCausalLM.from_pretrained(dir)`; the expected outputs were computed from the "
             "model as loaded back from that directory.\n")
    L.append("## Variants\n")
    L.append("| dir | quantization_config | linear weights stored | weight_scale |")
    L.append("|---|---|---|---|")
    L.append("| `float/` | none (plain float model, no quantization at all) | latent f32 | none |")
    L.append("| `online/` | autobitlinear + online | latent f32 (WeightQuant each forward) | none |")
    L.append("| `autobitlinear_offline/` | autobitlinear + offline (2B-4T layout) | packed u8 `[out/4, in]` "
             "| f32 `[1]` = mean\\|W\\| |")
    L.append("| `bitlinear_offline/` | bitlinear + offline | packed u8 `[out/4, in]` | f32 `[1]` = 1/mean\\|W\\| |")
    L.append("| `online_untied/` | autobitlinear + online, `tie_word_embeddings: false` | latent f32 "
             "+ separate `lm_head.weight` | none |")
    L.append("")
    L.append("`float`, `online`, both offline variants share the same latent weights (seed "
             f"{SEED}); the offline variants store exactly the ternary codes WeightQuant derives from "
             "them (the two offline `model.safetensors` have byte-identical packed weights; only "
             "`weight_scale` differs, mean|W| vs its f32 reciprocal). `online_untied` has the same "
             f"weights plus an `lm_head.weight` drawn from seed {SEED + 1}.\n")
    L.append("Init: embeddings (and untied lm_head) ~ N(0, "
             f"{EMB_STD}^2); q/k/v/gate/up weights ~ N(0, ({LIN_GAIN}/sqrt(in))^2); o_proj/down_proj "
             f"~ N(0, ({RESID_GAIN}/sqrt(in))^2) (so the layers, not the input embedding, dominate the "
             "residual stream: with tied embeddings a residual dominated by the last token's embedding "
             f"just repeats that token); every RMSNorm weight ~ U({1 - NORM_SPREAD}, {1 + NORM_SPREAD}). "
             "All linear out dims (64, 32, 160) are multiples of 4, so no packing padding occurs; "
             "transformers 5.24 cannot load a packed checkpoint with out % 4 != 0 at all (size mismatch "
             "in from_pretrained for both offline classes).\n")
    L.append("## Config\n")
    L.append("`config.json` of `autobitlinear_offline/` (the others differ only in "
             "`quantization_config` / `tie_word_embeddings`):\n")
    L.append("```json\n" + json.dumps(cfg_json["autobitlinear_offline"], indent=2) + "\n```\n")
    L.append("RoPE is spelled the transformers-5 way: `\"rope_parameters\": {\"rope_theta\": 10000.0, "
             "\"rope_type\": \"default\"}`; there is NO top-level `rope_theta` (2B-4T's own config.json "
             "and older ones use top-level `rope_theta`; loaders must accept both). The dtype key is "
             "`\"dtype\"` (transformers 5 writes `dtype`, older configs `torch_dtype`). "
             "`quantization_config` holds only `quant_method`, `linear_class`, `quantization_mode`; "
             "transformers' BitNetQuantConfig defaults apply to the rest (`use_rms_norm: false`, "
             "`modules_to_not_convert: null`, which makes transformers skip `lm_head` / the tied "
             "embedding automatically). The float variant has no quantization_config.\n")
    L.append("## Files\n")
    L.append("Each directory: `config.json`, `model.safetensors`, `expected.safetensors`.\n")
    L.append("| dir | " + " | ".join(sorted(sizes["float"])) + " |")
    L.append("|---|---|---|---|")
    for v in VARIANTS:
        L.append(f"| `{v}/` | " + " | ".join(f"{sizes[v][f]} B" for f in sorted(sizes[v])) + " |")
    L.append("")
    L.append("### model.safetensors tensors (name, dtype, shape)\n")
    for v in VARIANTS:
        L.append(f"`{v}/model.safetensors` ({len(layouts[v])} tensors):\n")
        L.append("```")
        for k, dt, shp in layouts[v]:
            L.append(f"{k:50s} {dt:5s} {shp}")
        L.append("```\n")
    L.append("### expected.safetensors\n")
    L.append("| name | dtype | shape | meaning |")
    L.append("|---|---|---|---|")
    e = results["online"]
    for i in range(len(prompts)):
        L.append(f"| `ids_p{i}` | I64 | {list(e[f'ids_p{i}'].shape)} | prompt {i} token ids "
                 f"(seed {PROMPT_SEED}, in [3, 256)) |")
    for i in range(len(prompts)):
        L.append(f"| `logits_p{i}` | F32 | {list(e[f'logits_p{i}'].shape)} | full-sequence forward, "
                 "logits at every position |")
    L.append(f"| `hidden1_p1` | F32 | {list(e['hidden1_p1'].shape)} | `output_hidden_states[1]` for p1 = "
             "residual stream after decoder layer 0 (no norm applied; checked against a forward hook). "
             "Beware: in transformers 5.24 the LAST entry of `hidden_states` is the output AFTER the final "
             "`model.norm`, not the raw last-layer output |")
    L.append(f"| `greedy_p1` | I64 | {list(e['greedy_p1'].shape)} | the {GREEDY_NEW} NEW tokens of "
             f"`generate(ids_p1, do_sample=False, max_new_tokens={GREEDY_NEW})` (KV cache; prompt excluded) |")
    L.append("")
    L.append("Prompts: " + "; ".join(f"p{i} = {p.tolist()}" for i, p in enumerate(prompts)) + "\n")
    L.append("## Measured\n")
    L.append("| variant | greedy_p1 | min top1-top2 margin (all positions of p0..p2) | min margin at "
             "the greedy steps | min per-position logit std | max \\|logit\\| | sdpa vs eager max diff |")
    L.append("|---|---|---|---|---|---|---|")
    for v in VARIANTS:
        st = stats[v]
        L.append(f"| `{v}` | {results[v]['greedy_p1'].tolist()} | {st['min_margin']:.4f} | "
                 f"{st['greedy_margins'].min().item():.4f} | {st['logit_spread']:.3f} | "
                 f"{st['logit_absmax']:.2f} | {st['sdpa_vs_eager']:.2e} |")
    L.append("")
    L.append("Max |logit difference| over all prompts and positions:\n")
    L.append("| a | b | max \\|a - b\\| |")
    L.append("|---|---|---|")
    for (a, b), x in diffs.items():
        L.append(f"| `{a}` | `{b}` | {x:.3e} |")
    L.append("")
    L.append("Small-margin positions (top1-top2 < 0.25), where an implementation within tolerance may "
             "pick a different argmax: " + "; ".join(
                 f"`{v}`: " + (", ".join(f"p{i}[{j}]={m:.3f}" for i in range(len(prompts))
                                       for j, m in enumerate(margins(results[v][f'logits_p{i}']).tolist())
                                       if m < 0.25) or "none") for v in VARIANTS) + ".\n")
    L.append(f"greedy_p1 identical across the quantized variants: {same_greedy}. Greedy with the KV cache "
             "matched greedy by full re-forward for every variant: "
             f"{all(stats[v]['greedy_nocache_agrees'] for v in VARIANTS)}.\n")
    L.append("Tolerances for an implementation: see NUMERICS.md (whole-model logits about 0.05-0.2 "
             "absolute; one float ulp can flip an int8 activation code). Compare greedy ids only where "
             "the margin is large.\n")
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write("\n".join(L))
    os.chmod(os.path.join(out_dir, "README.md"), 0o644)


if __name__ == "__main__":
    main()
