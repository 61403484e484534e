// The BitNet forward pass in CUDA C, compiled at run time by NVRTC for the
// device's own architecture (no toolkit on the build machine). Numerics
// follow the CPU engine (NUMERICS.md): RMSNorm then per-token absmax int8
// codes (round half to even), ternary x int8 dot products summed exactly
// in i32 and scaled once per output, rotate-half RoPE from the CPU's own
// cos/sin table, causal softmax attention in f32, ReLU² or SiLU gating.
//
// Every kernel reads the pass's token count, and where each token goes,
// from a device-side Step block rather than from its arguments, so one
// captured CUDA graph replays every decode step of that many tokens
// unchanged. The tokens of one pass may belong to several sequences, each
// in its own slot of the KV cache: after the header come (position, cache
// row) pairs, one per token (cache row = slot * context + position), then
// the residual rows that get logits.

struct Step {
    unsigned n;      // tokens in this pass
    unsigned _pad0;
    unsigned m;      // rows that get logits
    unsigned _pad1;
    // unsigned tok[2 * n]: position, cache row; unsigned rows[m]
};

__device__ __forceinline__ unsigned tok_pos(const Step* s, int t) {
    return reinterpret_cast<const unsigned*>(s)[4 + 2 * t];
}
__device__ __forceinline__ unsigned tok_row(const Step* s, int t) {
    return reinterpret_cast<const unsigned*>(s)[5 + 2 * t];
}
__device__ __forceinline__ unsigned logit_row(const Step* s, int r) {
    return reinterpret_cast<const unsigned*>(s)[4 + 2 * s->n + r];
}

#define FULL 0xffffffffu

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL, v, o));
    return v;
}
__device__ __forceinline__ int warp_sum_i(int v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL, v, o);
    return v;
}

// Block-wide reductions (blockDim.x a multiple of 32, at most 1024); every
// thread of the block must call them, and every thread gets the result.
__device__ float block_sum(float v, float* sh) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    v = lane < warps ? sh[lane] : 0.0f;
    return warp_sum(v);
}
__device__ float block_max(float v, float* sh) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    v = lane < warps ? sh[lane] : -3.0e38f;
    return warp_max(v);
}
__device__ int block_sum_i(int v, int* sh) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum_i(v);
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    v = lane < warps ? sh[lane] : 0;
    return warp_sum_i(v);
}

__device__ __forceinline__ bool nonfinite(float v) {
    return (__float_as_uint(v) & 0x7f800000u) == 0x7f800000u;
}

// RMSNorm then int8 codes, one block per token row. Only the codes (one
// byte per column, zero up to `stride`), the scale 127 / absmax and the
// code sum (the ternary kernel's offset correction) reach memory. The
// products are rounded one by one (no fused multiply-add) in the CPU's
// order, x * inv * weight * scale, so codes agree exactly.
extern "C" __global__ void norm_quant(const Step* step, const float* x, const float* weight,
                                      signed char* codes, float* scales, int* sums,
                                      unsigned* status, int cols, int stride, float eps) {
    __shared__ float shf[32];
    __shared__ int shi[32];
    int row = blockIdx.x;
    if (row >= (int)step->n) return;
    const float* xr = x + (size_t)row * cols;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        float v = xr[i];
        ss += v * v;
    }
    ss = block_sum(ss, shf);
    float inv = 1.0f / sqrtf(ss / (float)cols + eps);
    float amax = 0.0f;
    float bad = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        float v = fabsf(__fmul_rn(__fmul_rn(xr[i], inv), weight[i]));
        amax = fmaxf(amax, v);
        if (nonfinite(v)) bad = 1.0f;
    }
    float m = block_max(amax, shf);
    bool any_bad = __syncthreads_or(bad > 0.0f) != 0;
    float s = 127.0f / fmaxf(m, 1e-5f);
    int total = 0;
    signed char* out = codes + (size_t)row * stride;
    for (int c = threadIdx.x; c < stride; c += blockDim.x) {
        int q = 0;
        if (c < cols) {
            float v = __fmul_rn(__fmul_rn(__fmul_rn(xr[c], inv), weight[c]), s);
            v = fminf(fmaxf(v, -128.0f), 127.0f);
            q = __float2int_rn(v);
            total += q;
        }
        out[c] = (signed char)q;
    }
    total = block_sum_i(total, shi);
    if (threadIdx.x == 0) {
        scales[row] = s;
        sums[row] = total;
        if (any_bad) atomicOr(status, 1u);
    }
}

// Ternary weights x int8 activations, for one or several layers that
// read the same activations (q, k and v; gate and up), with the step that
// follows each fused into the write: RoPE, the ReLU²/SiLU gate, the
// residual add, the write into the KV cache.
//
// A weight row is `chunks` 16-byte chunks of 64 columns; each u32 word
// holds 16 columns as 2-bit `code + 1`, laid out so that
// `(word >> 2i) & 0x03030303` puts columns 4i..4i+3 into the four byte
// lanes, the order of one activation word. `__dp4a` then sums
// (code + 1) * x exactly, and subtracting the token's code sum leaves
// sum code * x. Rows are stored in pairs, and a warp computes one pair
// (16 lanes per row, 256 contiguous bytes per step): the two rows RoPE
// rotates together (j and j + d/2 of a head), a gate row and its up row,
// or two neighbouring rows. TOK tokens reuse every weight load.
//
// pairs[p] = {segment | 256 if row a's scale multiplies | 512 for row b's,
// output row a, output row b (-1: none), RoPE index j}. Segment flags:
// 1 add into the output; 4 token t's output row is its cache row (KV
// cache); 8 rotate the pair (RoPE at token t's position); 16 gate the pair
// (out[a] = act(row a) * row b), 32 with SiLU instead of ReLU².
#define F_ADD 1
#define F_CACHE 4
#define F_ROPE 8
#define F_GLU 16
#define F_SILU 32

struct Segments {
    float* out[3];
    int stride[3];
    int flags[3];
};

template <int TOK>
__device__ __forceinline__ void matmul_impl(const Step* step, const uint4* __restrict__ w,
                                            const float* __restrict__ wscale,
                                            const int4* __restrict__ pairs,
                                            const signed char* __restrict__ codes,
                                            const float* __restrict__ scales,
                                            const int* __restrict__ sums, Segments seg,
                                            const float* __restrict__ cos_t,
                                            const float* __restrict__ sin_t, int half, int npairs,
                                            int chunks, int stride) {
    const unsigned M = 0x03030303u;
    int lane = threadIdx.x & 31;
    int sub = lane & 15;
    int p = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int r = 2 * p + (lane >> 4);
    int n = (int)step->n;
    int t0 = blockIdx.y * TOK;
    if (t0 >= n) return;
    int nt = min(TOK, n - t0);
    // What the write needs, loaded before the dot products so that its
    // latency hides behind theirs.
    int4 pr = make_int4(0, 0, -1, 0);
    float ws_a = 1.0f, ws_b = 1.0f;
    float sx[TOK];
    int sm[TOK];
#pragma unroll
    for (int t = 0; t < TOK; t++) {
        sx[t] = 1.0f;
        sm[t] = 0;
    }
    if (p < npairs && lane == 0) {
        pr = pairs[p];
        ws_a = wscale[2 * p];
        ws_b = wscale[2 * p + 1];
#pragma unroll
        for (int t = 0; t < TOK; t++) {
            if (t < nt) {
                sx[t] = scales[t0 + t];
                sm[t] = sums[t0 + t];
            }
        }
    }
    int acc[TOK];
#pragma unroll
    for (int t = 0; t < TOK; t++) acc[t] = 0;
    if (p < npairs) {
        const uint4* wr = w + (size_t)r * chunks;
#pragma unroll 4
        for (int j = sub; j < chunks; j += 16) {
            uint4 ww = __ldg(wr + j);
            unsigned wd[4] = {ww.x, ww.y, ww.z, ww.w};
#pragma unroll
            for (int t = 0; t < TOK; t++) {
                if (t < nt) {
                    const int4* xa =
                        reinterpret_cast<const int4*>(codes + (size_t)(t0 + t) * stride) + 4 * j;
#pragma unroll
                    for (int q = 0; q < 4; q++) {
                        int4 a = __ldg(xa + q);
                        acc[t] = __dp4a((int)(wd[q] & M), a.x, acc[t]);
                        acc[t] = __dp4a((int)((wd[q] >> 2) & M), a.y, acc[t]);
                        acc[t] = __dp4a((int)((wd[q] >> 4) & M), a.z, acc[t]);
                        acc[t] = __dp4a((int)((wd[q] >> 6) & M), a.w, acc[t]);
                    }
                }
            }
        }
    }
    int other[TOK];
#pragma unroll
    for (int t = 0; t < TOK; t++) {
        acc[t] += __shfl_xor_sync(FULL, acc[t], 8);
        acc[t] += __shfl_xor_sync(FULL, acc[t], 4);
        acc[t] += __shfl_xor_sync(FULL, acc[t], 2);
        acc[t] += __shfl_xor_sync(FULL, acc[t], 1);
        other[t] = __shfl_sync(FULL, acc[t], 16);
    }
    if (p >= npairs || lane != 0) return;
    // Selects, not an indexed parameter array (which would go to local memory).
    int s = pr.x & 255;
    float* out = s == 0 ? seg.out[0] : (s == 1 ? seg.out[1] : seg.out[2]);
    int ostride = s == 0 ? seg.stride[0] : (s == 1 ? seg.stride[1] : seg.stride[2]);
    int flags = s == 0 ? seg.flags[0] : (s == 1 ? seg.flags[1] : seg.flags[2]);
    bool mul_a = (pr.x & 256) != 0, mul_b = (pr.x & 512) != 0;
#pragma unroll
    for (int t = 0; t < TOK; t++) {
        if (t < nt) {
            size_t orow = (flags & F_CACHE) ? tok_row(step, t0 + t) : (size_t)(t0 + t);
            float da = (float)(acc[t] - sm[t]), db = (float)(other[t] - sm[t]);
            float ya = mul_a ? da / sx[t] * ws_a : da / (ws_a * sx[t]);
            float yb = mul_b ? db / sx[t] * ws_b : db / (ws_b * sx[t]);
            float* o = out + orow * ostride;
            if (flags & F_ROPE) {
                size_t at = (size_t)tok_pos(step, t0 + t) * half + pr.w;
                float c = cos_t[at], sn = sin_t[at];
                float ra = ya * c - yb * sn;
                float rb = yb * c + ya * sn;
                ya = ra;
                yb = rb;
            }
            if (flags & F_GLU) {
                float g;
                if (flags & F_SILU) {
                    g = ya / (1.0f + expf(-ya));
                } else {
                    float q = ya < 0.0f ? 0.0f : ya;
                    g = q * q;
                }
                o[pr.y] = g * yb;
            } else if (flags & F_ADD) {
                o[pr.y] += ya;
                if (pr.z >= 0) o[pr.z] += yb;
            } else {
                o[pr.y] = ya;
                if (pr.z >= 0) o[pr.z] = yb;
            }
        }
    }
}

// Blocks per SM the one-token matmul is compiled to fit (a register cap;
// `bitnet doctor --gpu-bench` measures alternatives with -DMATMUL_MIN_BLOCKS).
#ifndef MATMUL_MIN_BLOCKS
#define MATMUL_MIN_BLOCKS 1
#endif

#define MATMUL(NAME, TOK, MIN_BLOCKS)                                                          \
    extern "C" __global__ void __launch_bounds__(256, MIN_BLOCKS) NAME(const Step* step, const uint4* w, const float* wscale,      \
                                    const int4* pairs, const signed char* codes,                \
                                    const float* scales, const int* sums, float* out0,          \
                                    float* out1, float* out2, int stride0, int stride1,         \
                                    int stride2, int flags0, int flags1, int flags2,            \
                                    const float* cos_t, const float* sin_t, int half,           \
                                    int npairs, int chunks, int stride) {                       \
        Segments seg = {{out0, out1, out2}, {stride0, stride1, stride2},                        \
                        {flags0, flags1, flags2}};                                              \
        matmul_impl<TOK>(step, w, wscale, pairs, codes, scales, sums, seg, cos_t, sin_t, half,  \
                         npairs, chunks, stride);                                               \
    }
MATMUL(matmul_1, 1, MATMUL_MIN_BLOCKS)
MATMUL(matmul_8, 8, 1)

// Causal attention of one query (token t = blockIdx.x, head = blockIdx.y)
// over its sequence's slot of the KV cache (positions 0..=its own), in tiles of ATT_TILE positions with a running max and
// sum: no score matrix in memory, so only the cache bounds the context.
// A thread computes each score; thread `dim` accumulates the values (head
// dims up to twice the block size).
#define ATT_TILE 1024
extern "C" __global__ void attention(const Step* step, const float* q, const float* kc,
                                     const float* vc, float* o, int heads, int kv_heads, int d,
                                     int q_stride, int kv_stride, float scale) {
    __shared__ __align__(16) float qs[512];
    __shared__ float sc[ATT_TILE];
    __shared__ float red[32];
    int t = blockIdx.x, head = blockIdx.y;
    if (t >= (int)step->n) return;
    int kvh = head / (heads / kv_heads);
    int pos = (int)tok_pos(step, t);
    int ctx = pos + 1;
    // The sequence's position 0 in the cache.
    size_t first = (size_t)tok_row(step, t) - (size_t)pos;
    const float* qr = q + (size_t)t * q_stride + head * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) qs[i] = qr[i];
    __syncthreads();
    float m = -3.0e38f, l = 0.0f, acc0 = 0.0f, acc1 = 0.0f;
    int d0 = threadIdx.x, d1 = threadIdx.x + blockDim.x;
    for (int base = 0; base < ctx; base += ATT_TILE) {
        int cnt = min(ATT_TILE, ctx - base);
        // A thread per position: independent loads, no reduction per score.
        for (int j = threadIdx.x; j < cnt; j += blockDim.x) {
            const float* kr = kc + (first + base + j) * kv_stride + kvh * d;
            float dot = 0.0f;
            if ((d & 3) == 0) {
                const float4* k4 = reinterpret_cast<const float4*>(kr);
                const float4* q4 = reinterpret_cast<const float4*>(qs);
#pragma unroll 8
                for (int i = 0; i < d / 4; i++) {
                    float4 a = q4[i], b = __ldg(k4 + i);
                    dot += a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
                }
            } else {
                for (int i = 0; i < d; i++) dot += qs[i] * kr[i];
            }
            sc[j] = dot * scale;
        }
        __syncthreads();
        float tm = -3.0e38f;
        for (int j = threadIdx.x; j < cnt; j += blockDim.x) tm = fmaxf(tm, sc[j]);
        tm = block_max(tm, red);
        float mn = fmaxf(m, tm);
        float corr = expf(m - mn);
        l *= corr;
        acc0 *= corr;
        acc1 *= corr;
        float ls = 0.0f;
        for (int j = threadIdx.x; j < cnt; j += blockDim.x) {
            float e = expf(sc[j] - mn);
            sc[j] = e;
            ls += e;
        }
        l += block_sum(ls, red);
        __syncthreads();
        const float* vb = vc + (first + base) * kv_stride + kvh * d;
        if (d0 < d) {
            float a = 0.0f;
#pragma unroll 8
            for (int j = 0; j < cnt; j++) a += sc[j] * vb[(size_t)j * kv_stride + d0];
            acc0 += a;
        }
        if (d1 < d) {
            float a = 0.0f;
            for (int j = 0; j < cnt; j++) a += sc[j] * vb[(size_t)j * kv_stride + d1];
            acc1 += a;
        }
        m = mn;
        __syncthreads();
    }
    float* orow = o + (size_t)t * q_stride + head * d;
    if (d0 < d) orow[d0] = acc0 / l;
    if (d1 < d) orow[d1] = acc1 / l;
}

// The final RMSNorm, to floats, over the step->m rows that get logits
// (the residual rows the step block lists).
extern "C" __global__ void rms_norm(const Step* step, const float* x, const float* weight,
                                    float* out, int cols, float eps) {
    __shared__ float sh[32];
    int row = blockIdx.x;
    if (row >= (int)step->m) return;
    const float* src = x + (size_t)logit_row(step, row) * cols;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        float v = src[i];
        ss += v * v;
    }
    ss = block_sum(ss, sh);
    float inv = 1.0f / sqrtf(ss / (float)cols + eps);
    for (int i = threadIdx.x; i < cols; i += blockDim.x)
        out[(size_t)row * cols + i] = src[i] * inv * weight[i];
}

__device__ __forceinline__ float f16_bits(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ float bf16_bits(unsigned short h) {
    return __uint_as_float(((unsigned)h) << 16);
}

// Logits: a warp per vocabulary row of the output matrix ([vocab, h],
// row-major as stored: f32, f16 or bf16), each weight load reused for up
// to MR logit rows. Rows of h % 8 == 0 are read 16 bytes per lane.
template <int KIND, int MR>
__device__ __forceinline__ void lm_head_impl(const Step* step, const float* __restrict__ x,
                                             const void* __restrict__ w, float* logits, int h,
                                             int vocab) {
    int lane = threadIdx.x & 31;
    int v = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int r0 = blockIdx.y * MR;
    int m = (int)step->m;
    if (v >= vocab || r0 >= m) return;
    int nr = min(MR, m - r0);
    float acc[MR];
#pragma unroll
    for (int r = 0; r < MR; r++) acc[r] = 0.0f;
    const float* xr = x + (size_t)r0 * h;
    if (KIND == 0) {
        const float* wr = reinterpret_cast<const float*>(w) + (size_t)v * h;
        if ((h & 3) == 0) {
            for (int k = lane * 4; k < h; k += 128) {
                float4 q = __ldg(reinterpret_cast<const float4*>(wr + k));
#pragma unroll
                for (int r = 0; r < MR; r++)
                    if (r < nr) {
                        float4 a = *reinterpret_cast<const float4*>(xr + (size_t)r * h + k);
                        acc[r] += q.x * a.x + q.y * a.y + q.z * a.z + q.w * a.w;
                    }
            }
        } else {
            for (int k = lane; k < h; k += 32) {
                float q = wr[k];
#pragma unroll
                for (int r = 0; r < MR; r++)
                    if (r < nr) acc[r] += q * xr[(size_t)r * h + k];
            }
        }
    } else {
        const unsigned short* wr = reinterpret_cast<const unsigned short*>(w) + (size_t)v * h;
        if ((h & 7) == 0) {
            for (int k = lane * 8; k < h; k += 256) {
                uint4 q = __ldg(reinterpret_cast<const uint4*>(wr + k));
                unsigned qw[4] = {q.x, q.y, q.z, q.w};
                float f[8];
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    unsigned short lo = (unsigned short)(qw[i] & 0xffffu);
                    unsigned short hi = (unsigned short)(qw[i] >> 16);
                    f[2 * i] = KIND == 1 ? f16_bits(lo) : bf16_bits(lo);
                    f[2 * i + 1] = KIND == 1 ? f16_bits(hi) : bf16_bits(hi);
                }
#pragma unroll
                for (int r = 0; r < MR; r++)
                    if (r < nr) {
                        const float4* a = reinterpret_cast<const float4*>(xr + (size_t)r * h + k);
                        float4 a0 = a[0], a1 = a[1];
                        acc[r] += f[0] * a0.x + f[1] * a0.y + f[2] * a0.z + f[3] * a0.w +
                                  f[4] * a1.x + f[5] * a1.y + f[6] * a1.z + f[7] * a1.w;
                    }
            }
        } else {
            for (int k = lane; k < h; k += 32) {
                float q = KIND == 1 ? f16_bits(wr[k]) : bf16_bits(wr[k]);
#pragma unroll
                for (int r = 0; r < MR; r++)
                    if (r < nr) acc[r] += q * xr[(size_t)r * h + k];
            }
        }
    }
#pragma unroll
    for (int r = 0; r < MR; r++) acc[r] = warp_sum(acc[r]);
    if (lane == 0) {
#pragma unroll
        for (int r = 0; r < MR; r++)
            if (r < nr) logits[(size_t)(r0 + r) * vocab + v] = acc[r];
    }
}

#define LM_HEAD(NAME, KIND, MR)                                                                \
    extern "C" __global__ void NAME(const Step* step, const float* x, const void* w,            \
                                    float* logits, int h, int vocab) {                          \
        lm_head_impl<KIND, MR>(step, x, w, logits, h, vocab);                                   \
    }
LM_HEAD(lm_head_f32_1, 0, 1)
LM_HEAD(lm_head_f32_8, 0, 8)
LM_HEAD(lm_head_f16_1, 1, 1)
LM_HEAD(lm_head_f16_8, 1, 8)
LM_HEAD(lm_head_bf16_1, 2, 1)
LM_HEAD(lm_head_bf16_8, 2, 8)
