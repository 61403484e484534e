#!/usr/bin/env python3
"""Generate BitLinear reference fixtures for bitnet-quant from HuggingFace transformers.

Run by hand (not by CI). The output is committed to the repository, so this only
needs to be re-run when the cases change:

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch transformers accelerate safetensors numpy
    TORCHDYNAMO_DISABLE=1 /tmp/refvenv/bin/python tools/make_fixtures.py [OUT_PATH]

OUT_PATH defaults to crates/bitnet-quant/tests/fixtures/bitlinear_reference.safetensors
relative to the repository root (the parent of this tools/ directory).

TORCHDYNAMO_DISABLE=1 matters: several functions in transformers/integrations/bitnet.py
are decorated with @torch.compile. With dynamo disabled they run eagerly, so the
fixtures record the plain PyTorch (eager, float32, CPU) semantics and not whatever an
inductor kernel might fuse/reorder.

Everything uses transformers' OWN code from transformers/integrations/bitnet.py:
  * ActQuant / WeightQuant            (fake-quant autograd Functions, used by AutoBitLinear)
  * BitLinear.activation_quant        (returns the int8 activation codes + per-token scale)
  * pack_weights / unpack_weights     (2-bit ternary packing)
  * AutoBitLinear (online and offline), BitLinear (offline, packed weights)
  * BitNetDeserialize                 (how an offline AutoBitLinear receives a packed checkpoint)
Independent re-computations (numpy / float64) are only used as assertions.

See crates/bitnet-quant/tests/fixtures/README.md for the tensor list and formulas.
"""

import math
import os
import sys

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import numpy as np
import torch
import torch.nn as nn
import transformers
from safetensors.torch import load_file, save_file
from transformers.integrations import bitnet as hf_bitnet
from transformers.integrations.bitnet import (
    ActQuant,
    AutoBitLinear,
    BitLinear,
    WeightQuant,
    pack_weights,
    unpack_weights,
)

torch.set_num_threads(1)  # deterministic CPU reduction order for the matmuls
torch.set_printoptions(precision=8)

# (name, out_features, in_features, tokens)
CASES = [
    ("c0", 5, 7, 3),
    ("c1", 8, 64, 4),
    ("c2", 13, 130, 5),
    ("c3", 64, 256, 2),
    ("c4", 3, 300, 3),
    ("c5", 32, 513, 4),
]
BASE_SEED = 20240601


# ----------------------------------------------------------------------------------------
# Input construction helpers (all float32)
# ----------------------------------------------------------------------------------------

def act_tie_row(n: int, absmax: float = 127.0) -> torch.Tensor:
    """Activation row whose per-token scale is exact and whose scaled values are x.5 ties.

    absmax=127 -> scale = 127/127 = 1 exactly, entries k+0.5 hit ties directly.
    absmax=254 -> scale = 127/254 = 0.5 exactly, odd integers become k+0.5 ties.
    The row starts with [absmax, .5, 1.5, 2.5, -.5, -2.5] (scaled), then cycles through
    more +-(k+.5) ties, and its last element is -absmax.
    """
    unit = absmax / 127.0  # 1.0 or 2.0 (exact)
    base = [127.0, 0.5, 1.5, 2.5, -0.5, -2.5, 3.5, -3.5, 126.5, -126.5, 63.5, -64.5]
    vals = [base[i] if i < len(base) else ((i * 37) % 253 - 126) + 0.5 for i in range(n)]
    vals[-1] = -127.0 if n > 6 else vals[-1]
    return torch.tensor(vals, dtype=torch.float32) * unit


def tie_weights(out_f: int, in_f: int, pow2: float, zero_row: int, gen: torch.Generator) -> torch.Tensor:
    """Latent weights whose mean |W| is EXACTLY `pow2` (a power of two) and that contain
    many entries at exactly +-0.5*mean|W| (plus +-1.5, +-2.5, +-1 times mean|W|).

    All values are multiples of 0.5 (before the power-of-two factor), so the float32 sum of
    |W| is exact in any order and mean|W| = sum/n = pow2 exactly. Hence WeightQuant's
    scale = 1/pow2 is exact and W*scale lands exactly on the .5 ties.
    One row is all zeros.
    """
    choices = torch.tensor([-2.5, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.5])
    idx = torch.randint(0, len(choices), (out_f, in_f), generator=gen)
    w = choices[idx].clone()
    w[zero_row] = 0.0
    n = out_f * in_f
    # adjust the sum of |w| to exactly n in steps of 0.5 (exact arithmetic)
    steps = int(round((w.abs().sum().item() - n) / 0.5))
    flat = w.view(-1)
    rows = torch.arange(n) // in_f
    if steps > 0:  # shrink magnitudes >= 1 by 0.5 (keeps them non-zero, creates more .5 ties)
        cand = torch.nonzero((flat.abs() >= 1.0) & (rows != zero_row)).view(-1)
        pick = cand[torch.randperm(len(cand), generator=gen)[:steps]]
        assert len(pick) == steps
        flat[pick] -= 0.5 * torch.sign(flat[pick])
    elif steps < 0:  # grow non-zero magnitudes by 0.5
        cand = torch.nonzero((flat.abs() >= 0.5) & (rows != zero_row)).view(-1)
        pick = cand[torch.randperm(len(cand), generator=gen)[:-steps]]
        assert len(pick) == -steps
        flat[pick] += 0.5 * torch.sign(flat[pick])
    assert w.abs().sum().item() == n
    w = (w * pow2).to(torch.float32)
    assert w.abs().mean().item() == pow2
    return w


def make_case(name: str, out_f: int, in_f: int, tokens: int, seed: int):
    """Build (x, w, notes) for one case. `notes` documents the hard rows/cols for the README."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, in_f, generator=gen, dtype=torch.float32)
    notes = []
    if name == "c0":
        x[0] = act_tie_row(in_f, 127.0)
        x[1] = 0.0
        w = tie_weights(out_f, in_f, 1.0, zero_row=4, gen=gen)
        notes = ["x[0]: ties, scale 1", "x[1]: all zero", "x[2]: randn",
                 "w: mean|W| = 1 exactly, +-0.5/+-1.5/+-2.5 ties", "w[4]: all zero"]
    elif name == "c1":
        x[1] = act_tie_row(in_f, 254.0)
        x[2, 5] = 1.0e3
        x[3] = torch.randn(in_f, generator=gen) * 2.0e-6  # absmax < 1e-5: clamp of the scale
        w = torch.randn(out_f, in_f, generator=gen) * 0.02
        w[3] = 0.0
        notes = ["x[0]: randn", "x[1]: ties, absmax 254 (scale 0.5)", "x[2]: randn, x[2,5] = 1e3 outlier",
                 "x[3]: randn*2e-6 (absmax < 1e-5, scale clamped to 127/1e-5)",
                 "w: randn*0.02", "w[3]: all zero"]
    elif name == "c2":
        x[0] = act_tie_row(in_f, 127.0)
        x[2] = 0.0
        x[3, in_f - 1] = -1.0e3
        x[4] = x[4] * 1.0e-3
        w = tie_weights(out_f, in_f, 0.125, zero_row=7, gen=gen)
        notes = ["x[0]: ties, scale 1", "x[1]: randn", "x[2]: all zero", "x[3]: randn, x[3,129] = -1e3 outlier",
                 "x[4]: randn*1e-3", "w: mean|W| = 0.125 exactly (scale 8), ties at +-0.0625", "w[7]: all zero"]
    elif name == "c3":
        x[0, 17] = 1.0e3
        x[1] = act_tie_row(in_f, 254.0)
        w = torch.randn(out_f, in_f, generator=gen) * 0.05
        w[0] = 0.0
        notes = ["x[0]: randn, x[0,17] = 1e3 outlier", "x[1]: ties, absmax 254 (scale 0.5)",
                 "w: randn*0.05", "w[0]: all zero"]
    elif name == "c4":
        x[1] = 0.0
        x[2] = act_tie_row(in_f, 127.0)
        w = torch.randn(out_f, in_f, generator=gen)
        w[1, 10] = 1.0e3  # weight outlier: inflates mean|W|, most codes become 0
        w[2] = 0.0
        notes = ["x[0]: randn", "x[1]: all zero", "x[2]: ties, scale 1",
                 "w: randn, w[1,10] = 1e3 outlier", "w[2]: all zero"]
    elif name == "c5":
        x[0] = x[0] * 10.0
        x[:2, 512] = 1.0e3  # outlier column (the last, odd-sized tail)
        x[2] = act_tie_row(in_f, 127.0)
        w = tie_weights(out_f, in_f, 2.0 ** -5, zero_row=31, gen=gen)
        notes = ["x[0]: randn*10, x[0,512] = 1e3", "x[1]: randn, x[1,512] = 1e3", "x[2]: ties, scale 1", "x[3]: randn",
                 "w: mean|W| = 2^-5 exactly (scale 32), ties", "w[31]: all zero"]
    else:
        raise ValueError(name)
    return x.contiguous().float(), w.contiguous().float(), notes


# ----------------------------------------------------------------------------------------
# Reference computations with transformers' own code
# ----------------------------------------------------------------------------------------

def hf_activation_codes(x: torch.Tensor):
    """int8 codes and per-token scale from transformers' BitLinear.activation_quant."""
    bl = BitLinear(x.shape[-1], 4, bias=False, dtype=torch.float32)
    codes, scale = bl.activation_quant(x)  # codes int8 [T, in], scale f32 [T, 1]
    assert codes.dtype == torch.int8 and scale.dtype == torch.float32
    # --- cross-checks ---
    # (a) ActQuant (used by AutoBitLinear) dequantizes to exactly codes/scale
    deq = ActQuant.apply(x)
    assert torch.equal(deq, codes.float() / scale), "ActQuant != codes/scale"
    assert torch.equal(torch.round(deq * scale).to(torch.int8), codes), "round(ActQuant*scale) != codes"
    # (b) the formula in numpy (np.round is round-half-to-even), float32 throughout
    xn = x.numpy()
    s_np = np.float32(127.0) / np.maximum(np.abs(xn).max(axis=-1, keepdims=True), np.float32(1e-5))
    c_np = np.clip(np.round(xn * s_np), -128, 127).astype(np.int8)
    assert s_np.dtype == np.float32
    assert np.array_equal(s_np, scale.numpy()), "numpy scale differs"
    assert np.array_equal(c_np, codes.numpy()), "numpy codes differ"
    return codes, scale


def hf_weight_codes(w: torch.Tensor):
    """Ternary codes from transformers' WeightQuant, and its scale 1/clamp(mean|W|, 1e-5)."""
    deq = WeightQuant.apply(w)  # = round(w*scale).clamp(-1,1) / scale
    scale = 1.0 / w.abs().mean().clamp_(min=1e-5)  # identical expression to WeightQuant.forward
    codes = torch.round(deq * scale).to(torch.int8)
    # cross-checks: direct formula and numpy round-half-even
    assert torch.equal(codes, torch.round(w * scale).clamp(-1, 1).to(torch.int8))
    assert torch.equal(deq, codes.float() / scale)
    wn = w.numpy()
    m_np = np.float32(np.abs(wn).astype(np.float64).mean())  # float64 mean, rounded once
    if not np.isclose(m_np, 1.0 / scale.item(), rtol=1e-6):
        raise AssertionError("mean|W| mismatch")
    c_np = np.clip(np.round(wn * scale.numpy()), -1, 1).astype(np.int8)
    assert np.array_equal(c_np, codes.numpy())
    return codes, scale.reshape(1).float()


def check_packing_layout(codes: torch.Tensor, packed: torch.Tensor):
    """Assert: byte [r, c] bits 2k..2k+1 hold codes[r + k*R, c] + 1 (R = ceil(out/4)),
    and 0 where r + k*R >= out."""
    out_f = codes.shape[0]
    R = math.ceil(out_f / 4)
    assert packed.shape == (R, codes.shape[1]) and packed.dtype == torch.uint8
    p = packed.to(torch.int32)
    for k in range(4):
        field = (p >> (2 * k)) & 3
        for r in range(R):
            src = r + k * R
            expect = (codes[src].to(torch.int32) + 1) if src < out_f else torch.zeros_like(field[r])
            assert torch.equal(field[r], expect), f"packing layout mismatch k={k} r={r}"


def run_case(name, out_f, in_f, tokens, seed, tensors, readme_rows):
    x, w, notes = make_case(name, out_f, in_f, tokens, seed)

    # ---- quantizers ----
    x_codes, x_scale = hf_activation_codes(x)
    w_codes, w_scale = hf_weight_codes(w)

    # ---- packing (pack_weights does `quantized_weights += 1` in place: pass a clone) ----
    packed = pack_weights(w_codes.clone())
    check_packing_layout(w_codes, packed)
    unpacked = unpack_weights(packed, dtype=torch.float32)  # [4*R, in]
    assert torch.equal(unpacked[:out_f].to(torch.int8), w_codes), "unpack_weights(packed) != w_codes"
    # rows past out_f (out % 4 != 0) unpack as 0 - 1 = -1, they are padding garbage
    assert torch.all(unpacked[out_f:] == -1)

    with torch.no_grad():
        # ---- AutoBitLinear, online (quantization_mode="online"): latent float weight ----
        m_on = AutoBitLinear(in_f, out_f, bias=False, dtype=torch.float32, online_quant=True)
        m_on.weight.copy_(w)
        y_online = m_on(x)

        # ---- AutoBitLinear, offline: weight = unpacked ternary codes (float), weight_scale = mean|W| ----
        # A packed checkpoint reaches AutoBitLinear through BitNetDeserialize, which calls
        # unpack_weights; it only does so when packed.shape[0]*4 == out_features.
        ws_auto = w.abs().mean().clamp(min=1e-5).reshape(1).float()  # = the checkpoint's weight_scale
        m_off = AutoBitLinear(in_f, out_f, bias=False, dtype=torch.float32, online_quant=False)
        m_off.requires_grad_(False)
        if out_f % 4 == 0:
            holder = nn.Module()
            holder.lin = m_off
            w_loaded = hf_bitnet.BitNetDeserialize(None).convert(
                {"weight": [packed.clone()]}, model=holder, full_layer_name="lin.weight")["weight"]
        else:  # transformers cannot unpack this shape itself; slice the padding rows off
            w_loaded = unpack_weights(packed, dtype=torch.float32)[:out_f]
        assert w_loaded.shape == (out_f, in_f) and w_loaded.dtype == torch.float32
        m_off.weight.copy_(w_loaded)
        m_off.weight_scale.copy_(ws_auto)
        y_auto_off = m_off(x)

        # ---- BitLinear, offline: weight = packed uint8 buffer, weight_scale = 1/mean|W| ----
        ws_bl = w_scale.clone()
        m_bl = BitLinear(in_f, out_f, bias=False, dtype=torch.float32, use_rms_norm=False)
        assert m_bl.rms_norm is None and m_bl.bias is None
        m_bl.weight = packed.clone()  # buffer was created with out//4 rows; replace with ceil(out/4)
        m_bl.weight_scale = ws_bl.clone()
        y_bl_full = m_bl(x)  # [tokens, 4*ceil(out/4)]: extra columns come from padding rows
        y_bl = y_bl_full[:, :out_f].contiguous()

    # ---- BitLinear is bit-exactly reproducible from integers: the float32 matmul of integer
    # codes is exact (|acc| <= 127*in < 2^24), then ONE f32 product and ONE f32 division ----
    acc_i = x_codes.to(torch.int64) @ w_codes.to(torch.int64).T
    assert acc_i.abs().max().item() < 2 ** 24
    y_bl_int = acc_i.to(torch.float32) / (ws_bl * x_scale)  # (weight_scale * x_scale) first
    assert torch.equal(y_bl_int, y_bl), "BitLinear output is not acc / (ws * sx) bit-exactly"

    # ---- float64 re-computation from codes (sanity) ----
    acc = x_codes.double() @ w_codes.double().T  # exact integer dot products
    y64 = acc / (x_scale.double() * (1.0 / ws_auto.double()))  # = acc * mean|W| / x_scale
    y64_b = acc / (x_scale.double() * ws_bl.double())
    diffs = {
        "online": (y_online.double() - y64).abs().max().item(),
        "autobitlinear_offline": (y_auto_off.double() - y64).abs().max().item(),
        "bitlinear_offline": (y_bl.double() - y64_b).abs().max().item(),
        "online-vs-auto_off": (y_online - y_auto_off).abs().max().item(),
        "online-vs-bitlinear": (y_online - y_bl).abs().max().item(),
        "auto_off-vs-bitlinear": (y_auto_off - y_bl).abs().max().item(),
    }
    ymax = y64.abs().max().item()
    print(f"{name}: out={out_f} in={in_f} tokens={tokens} |y|max={ymax:.6g} "
          f"w_scale={w_scale.item():.9g} mean|W|={ws_auto.item():.9g}")
    for k, v in diffs.items():
        print(f"    max|diff| {k:24s} {v:.3e}  (rel {v / max(ymax, 1e-30):.3e})")
    # loose sanity bound (float32 matmul rounding only)
    for k, v in diffs.items():
        assert v <= 1e-5 * max(ymax, 1.0), (name, k, v)
    # exact properties: zero activation rows / zero weight rows give exact zeros
    for t in range(tokens):
        if torch.all(x[t] == 0):
            for y in (y_online, y_auto_off, y_bl):
                assert torch.all(y[t] == 0)
    for o in range(out_f):
        if torch.all(w[o] == 0):
            for y in (y_online, y_auto_off, y_bl):
                assert torch.all(y[:, o] == 0)

    out = {
        "x": x,
        "x_codes": x_codes,
        "x_scale": x_scale.reshape(tokens),
        "w": w,
        "w_codes": w_codes,
        "w_scale": w_scale.reshape(1),
        "packed": packed,
        "y_online": y_online,
        "y_autobitlinear_offline": y_auto_off,
        "y_bitlinear_offline": y_bl,
        "weight_scale_autobitlinear": m_off.weight_scale.detach().reshape(1),
        "weight_scale_bitlinear": m_bl.weight_scale.detach().reshape(1),
    }
    for k, v in out.items():
        tensors[f"{name}.{k}"] = v.detach().contiguous().clone()
    readme_rows.append((name, out_f, in_f, tokens, seed, notes))


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    default_out = os.path.join(here, "..", "crates", "bitnet-quant", "tests", "fixtures",
                               "bitlinear_reference.safetensors")
    out_path = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else default_out)
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"TORCHDYNAMO_DISABLE={os.environ.get('TORCHDYNAMO_DISABLE')}")

    tensors, rows = {}, []
    for i, (name, o, n, t) in enumerate(CASES):
        run_case(name, o, n, t, BASE_SEED + i, tensors, rows)

    # ---- standalone examples ----
    ax = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -2.5]], dtype=torch.float32)
    ac, asc = hf_activation_codes(ax)
    assert ac.tolist() == [[127, 0, 2, 2, 0, -2]], ac.tolist()
    assert asc.item() == 1.0
    tensors["act_example.x"] = ax
    tensors["act_example.codes"] = ac.contiguous()
    tensors["act_example.scale"] = asc.reshape(1).contiguous()

    wx = torch.tensor([0.5, -0.5, 1.5, 1.5], dtype=torch.float32).reshape(1, 4)
    wc, wsc = hf_weight_codes(wx)
    assert wc.tolist() == [[0, 0, 1, 1]], wc.tolist()
    assert wsc.item() == 1.0
    tensors["weight_example.w"] = wx
    tensors["weight_example.codes"] = wc.contiguous()
    tensors["weight_example.scale"] = wsc.contiguous()

    save_file(tensors, out_path, metadata={
        "generator": "tools/make_fixtures.py",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torchdynamo_disabled": str(os.environ.get("TORCHDYNAMO_DISABLE")),
    })

    # ---- reload and verify the file round-trips bit-exactly ----
    back = load_file(out_path)
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    print(f"wrote {out_path}: {len(tensors)} tensors, {os.path.getsize(out_path)} bytes")
    for name, o, n, t, seed, notes in rows:
        print(f"  {name} (out={o}, in={n}, tokens={t}, seed={seed}): " + "; ".join(notes))


if __name__ == "__main__":
    main()
