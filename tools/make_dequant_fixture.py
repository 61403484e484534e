#!/usr/bin/env python3
"""Dequantization oracle for Q8_0, Q4_K and Q6_K, from gguf-py's numpy code.

Writes random *valid* blocks (finite f16 scales, every other byte random) and
what `gguf.quants.dequantize` makes of them, so that
crates/bitnet-models/tests/gguf/dequant_oracle.rs can check our decoders
against code nobody here wrote. Run by hand; the output is committed:

    # gguf-py from PyPI, or the copy vendored in llama.cpp (llama-cpp-python sdist):
    /tmp/refvenv/bin/pip install gguf numpy safetensors
    #   or: export PYTHONPATH=/tmp/llamacpp/src/gguf-py
    /tmp/refvenv/bin/python tools/make_dequant_fixture.py [OUT]

OUT defaults to crates/bitnet-models/tests/fixtures/dequant_oracle.safetensors.
Tensors, per type T in {Q8_0, Q4_K, Q6_K}: `T.bytes` (U8, the raw blocks of
ROWS rows) and `T.expected` (F32, [ROWS, ROW_LEN]).
"""

import sys
from pathlib import Path

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf.quants import dequantize
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else (
    ROOT / "crates/bitnet-models/tests/fixtures/dequant_oracle.safetensors")

# (type, byte offsets of the f16 scales within a block, rows, row length)
CASES = [
    (T.Q8_0, [0], 4, 256),
    (T.Q4_K, [0, 2], 4, 1024),
    (T.Q6_K, [208], 4, 1024),
]


def finite_f16(rng, n):
    """Random f16 bit patterns that are finite: every exponent but 0x1f,
    so subnormals, zeros, negatives and 65504 all occur."""
    bits = rng.integers(0, 1 << 16, size=n, dtype=np.uint32).astype(np.uint16)
    exp = (bits >> 10) & 0x1F
    bits = np.where(exp == 0x1F, bits & ~np.uint16(0x4000), bits).astype(np.uint16)
    # A few typical magnitudes too, so the values are not all huge or tiny.
    typical = np.float16(rng.uniform(-0.05, 0.05, size=n)).view(np.uint16)
    return np.where(rng.random(n) < 0.5, typical, bits).astype(np.uint16)


def main():
    rng = np.random.default_rng(20261126)
    tensors = {}
    for ty, scale_offsets, rows, row_len in CASES:
        block_w, block_b = GGML_QUANT_SIZES[ty]
        n_blocks = rows * row_len // block_w
        raw = rng.integers(0, 256, size=(n_blocks, block_b), dtype=np.uint16).astype(np.uint8)
        for off in scale_offsets:
            raw[:, off:off + 2] = finite_f16(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
        expected = dequantize(raw.reshape(rows, -1), ty).astype(np.float32)
        assert expected.shape == (rows, row_len), expected.shape
        assert np.isfinite(expected).all()
        tensors[f"{ty.name}.bytes"] = raw.reshape(-1).copy()
        tensors[f"{ty.name}.expected"] = np.ascontiguousarray(expected)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(OUT))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
