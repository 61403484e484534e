//! Encoders for the GGUF float storage types that hold embeddings and the
//! output layer: Q8_0, Q4_K and Q6_K (and F32/F16/BF16), the inverse of
//! [`super::dequant`].
//!
//! Each k-quant encoder is a line-by-line port of ggml's scalar reference
//! (`quantize_row_q8_0_ref`, `quantize_row_q4_K_ref` with
//! `make_qkx2_quants`, `quantize_row_q6_K_ref` with `make_qx_quants`), the
//! code llama.cpp's quantizer runs when no importance matrix is given, so
//! our files hold what `llama-quantize` would write. Rust never fuses a
//! multiply and an add on its own; a ggml built with `-march=native` may,
//! so a rare element can round differently there (the fixture test
//! `tests/gguf/encode_oracle.rs` measures how often). Block layouts are
//! drawn in [`super::dequant`].

use super::dequant::{QK_K, QK8_0};
use super::types::GgmlType;
use half::{bf16, f16};

/// ggml's `GROUP_MAX_EPS`: groups with a smaller absmax are all zero.
const GROUP_MAX_EPS: f32 = 1e-15;

/// Why a row could not be encoded.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The row is not a whole number of blocks.
    #[error("{ty} needs rows that are a multiple of {block} values, this one has {len}")]
    NotWholeBlocks {
        /// Target type.
        ty: GgmlType,
        /// Its block length.
        block: usize,
        /// The row length given.
        len: usize,
    },
    /// A NaN or infinite input (a scale computed from it would poison the block).
    #[error("non-finite value {value} at element {index}")]
    NonFinite {
        /// Element index within the row.
        index: usize,
        /// The value.
        value: f32,
    },
    /// A type this module does not encode.
    #[error("encoding to {0} is not supported (F32, F16, BF16, Q8_0, Q4_K, Q6_K)")]
    Unsupported(GgmlType),
}

/// ggml's `nearest_int`: round half to even through the 1.5·2^23 trick
/// (callers keep |v| < 2^22).
#[inline]
fn nearest_int(v: f32) -> i32 {
    let bits = (v + 12_582_912.0f32).to_bits() as i32;
    (bits & 0x007f_ffff) - 0x0040_0000
}

/// Whether `ty` can be written by [`encode_row`].
pub fn is_supported(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::F32
            | GgmlType::F16
            | GgmlType::BF16
            | GgmlType::Q8_0
            | GgmlType::Q4_K
            | GgmlType::Q6_K
    )
}

/// Elements per block of `ty` (1 for plain floats).
pub fn block_len(ty: GgmlType) -> usize {
    match ty {
        GgmlType::Q8_0 => QK8_0,
        GgmlType::Q4_K | GgmlType::Q6_K => QK_K,
        _ => 1,
    }
}

/// Encodes `x` (whole blocks) as `ty`, appending the bytes to `out`.
pub fn encode_row(ty: GgmlType, x: &[f32], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    if !is_supported(ty) {
        return Err(EncodeError::Unsupported(ty));
    }
    let block = block_len(ty);
    if !x.len().is_multiple_of(block) {
        return Err(EncodeError::NotWholeBlocks {
            ty,
            block,
            len: x.len(),
        });
    }
    if let Some((index, &value)) = x.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(EncodeError::NonFinite { index, value });
    }
    match ty {
        GgmlType::F32 => out.extend(x.iter().flat_map(|v| v.to_le_bytes())),
        GgmlType::F16 => out.extend(x.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes())),
        GgmlType::BF16 => out.extend(x.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes())),
        GgmlType::Q8_0 => x.chunks_exact(QK8_0).for_each(|b| q8_0_block(b, out)),
        GgmlType::Q4_K => x.chunks_exact(QK_K).for_each(|b| q4_k_block(b, out)),
        GgmlType::Q6_K => x.chunks_exact(QK_K).for_each(|b| q6_k_block(b, out)),
        _ => return Err(EncodeError::Unsupported(ty)),
    }
    Ok(())
}

/// `quantize_row_q8_0_ref` for one block of 32.
fn q8_0_block(x: &[f32], out: &mut Vec<u8>) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend(f16::from_f32(d).to_le_bytes());
    // C's roundf: half away from zero.
    out.extend(x.iter().map(|&v| (v * id).round() as i8 as u8));
}

/// ggml's `make_qkx2_quants` (n = 32, use_mad = false): a scale and a min
/// for one sub-block of asymmetric codes `0..=nmax`, refined by a search
/// over `nstep + 1` candidate scales minimizing the weighted squared error.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out.iter_mut().for_each(|l| *l = 0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min));
        l_out[i] = l.clamp(0, nmax) as u8;
        let diff = scale * f32::from(l_out[i]) + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * f32::from(laux[i]) + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                l_out[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// `quantize_row_q4_K_ref` for one super-block of 256.
fn q4_k_block(x: &[f32], out: &mut Vec<u8>) {
    let mut l_codes = [0u8; QK_K];
    let mut laux = [0u8; 32];
    let mut weights = [0.0f32; 32];
    let mut mins = [0.0f32; QK_K / 32];
    let mut scales = [0.0f32; QK_K / 32];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for j in 0..QK_K / 32 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (s, m) = make_qkx2_quants(
            15,
            xs,
            &weights,
            &mut l_codes[32 * j..32 * j + 32],
            &mut laux,
            -1.0,
            0.1,
            20,
        );
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut sc = [0u8; 12];
    for j in 0..QK_K / 32 {
        // C assigns the int to a uint8_t (wrapping), then takes MIN(63, .).
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            sc[j] = ls;
            sc[j + 4] = lm;
        } else {
            sc[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            sc[j - 4] |= (ls >> 4) << 6;
            sc[j] |= (lm >> 4) << 6;
        }
    }
    let d16 = f16::from_f32(max_scale / 63.0);
    let dmin16 = f16::from_f32(max_min / 63.0);
    let block = super::dequant::BlockQ4K {
        d: d16.to_le_bytes(),
        dmin: dmin16.to_le_bytes(),
        scales: sc,
        qs: [0; QK_K / 2],
    };
    for j in 0..QK_K / 32 {
        let (s, m) = block.scale_min(j);
        let d = d16.to_f32() * f32::from(s);
        if d == 0.0 {
            continue;
        }
        let dm = dmin16.to_f32() * f32::from(m);
        for ii in 0..32 {
            let l = nearest_int((x[32 * j + ii] + dm) / d);
            l_codes[32 * j + ii] = l.clamp(0, 15) as u8;
        }
    }
    out.extend(block.d);
    out.extend(block.dmin);
    out.extend(block.scales);
    for j in (0..QK_K).step_by(64) {
        out.extend((0..32).map(|l| l_codes[j + l] | (l_codes[j + l + 32] << 4)));
    }
}

/// ggml's `make_qx_quants` with `rmse_type = 1` and no importance weights:
/// a symmetric scale for codes `-nmax..nmax-1`, refined over 18 candidates.
/// Writes codes offset by `nmax` into `l_out`.
fn make_qx_quants(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out.iter_mut().for_each(|l| *l = 0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let mut iscale = -nmaxf / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (i, &v) in x.iter().enumerate() {
        let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        l_out[i] = (l + nmax) as i8;
        let w = v * v;
        let lf = l as f32;
        sumlx += w * v * lf;
        suml2 += w * lf * lf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmaxf + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in x {
            let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (i, &v) in x.iter().enumerate() {
                let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
                l_out[i] = (l + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// `quantize_row_q6_K_ref` for one super-block of 256.
fn q6_k_block(x: &[f32], out: &mut Vec<u8>) {
    let mut l_codes = [0i8; QK_K];
    let mut scales = [0.0f32; QK_K / 16];
    let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
    for ib in 0..QK_K / 16 {
        let s = make_qx_quants(
            32,
            &x[16 * ib..16 * ib + 16],
            &mut l_codes[16 * ib..16 * ib + 16],
        );
        scales[ib] = s;
        if s.abs() > max_abs_scale {
            max_abs_scale = s.abs();
            max_scale = s;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        out.extend(std::iter::repeat_n(0u8, 210));
        return;
    }
    let iscale = -128.0f32 / max_scale;
    let d16 = f16::from_f32(1.0 / iscale);
    let mut sc = [0i8; QK_K / 16];
    for (s, &v) in sc.iter_mut().zip(&scales) {
        *s = nearest_int(iscale * v).min(127) as i8;
    }
    for j in 0..QK_K / 16 {
        let d = d16.to_f32() * f32::from(sc[j]);
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let l = nearest_int(x[16 * j + ii] / d).clamp(-32, 31);
            l_codes[16 * j + ii] = (l + 32) as i8;
        }
    }
    let l = |i: usize| l_codes[i] as u8;
    let mut ql = [0u8; QK_K / 2];
    let mut qh = [0u8; QK_K / 4];
    for (h, j) in (0..QK_K).step_by(128).enumerate() {
        let (ql, qh) = (&mut ql[64 * h..64 * h + 64], &mut qh[32 * h..32 * h + 32]);
        for i in 0..32 {
            let (q1, q2, q3, q4) = (
                l(j + i) & 0xF,
                l(j + i + 32) & 0xF,
                l(j + i + 64) & 0xF,
                l(j + i + 96) & 0xF,
            );
            ql[i] = q1 | (q3 << 4);
            ql[i + 32] = q2 | (q4 << 4);
            qh[i] = (l(j + i) >> 4)
                | ((l(j + i + 32) >> 4) << 2)
                | ((l(j + i + 64) >> 4) << 4)
                | ((l(j + i + 96) >> 4) << 6);
        }
    }
    out.extend(ql);
    out.extend(qh);
    out.extend(sc.iter().map(|&s| s as u8));
    out.extend(d16.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::dequant::dequantize_row;

    /// Deterministic, varied data: Gaussian-ish values of several magnitudes,
    /// some exact zeros and an all-zero block.
    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let u = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                match i / 256 {
                    1 => 0.0,
                    b => u * 0.02 * (1 + b % 5) as f32 * if i % 97 == 0 { 8.0 } else { 1.0 },
                }
            })
            .collect()
    }

    fn roundtrip(ty: GgmlType, x: &[f32]) -> Vec<f32> {
        let mut bytes = Vec::new();
        encode_row(ty, x, &mut bytes).unwrap();
        let mut y = vec![0.0; x.len()];
        dequantize_row(ty, &bytes, &mut y).unwrap();
        y
    }

    /// Round trip through our decoders: relative RMS error within what each
    /// type's bits allow, exact zeros for an all-zero block.
    #[test]
    fn every_type_round_trips_within_its_precision() {
        let x = data(256 * 8, 7);
        let rms = |a: &[f32], b: &[f32]| {
            let e: f64 = a.iter().zip(b).map(|(p, q)| f64::from(p - q).powi(2)).sum();
            let s: f64 = a.iter().map(|p| f64::from(*p).powi(2)).sum();
            (e / s).sqrt()
        };
        for (ty, tol) in [
            (GgmlType::F32, 0.0),
            (GgmlType::F16, 1e-3),
            (GgmlType::BF16, 5e-3),
            (GgmlType::Q8_0, 0.01),
            (GgmlType::Q6_K, 0.03),
            (GgmlType::Q4_K, 0.12),
        ] {
            let y = roundtrip(ty, &x);
            let e = rms(&x, &y);
            assert!(e <= tol, "{ty}: relative rms error {e}");
            assert!(y[256..512].iter().all(|&v| v == 0.0), "{ty}: zero block");
        }
    }

    #[test]
    fn q8_0_matches_the_reference_formula() {
        let mut x = [0.0f32; 32];
        x[0] = 1.27;
        x[1] = -0.635; // exactly half a step: roundf goes away from zero
        x[2] = 0.005;
        let mut b = Vec::new();
        encode_row(GgmlType::Q8_0, &x, &mut b).unwrap();
        assert_eq!(f16::from_le_bytes([b[0], b[1]]), f16::from_f32(0.01));
        assert_eq!(b[2] as i8, 127);
        assert_eq!(b[3] as i8, -64);
        assert_eq!(b[4] as i8, 1);
    }

    #[test]
    fn bad_rows_are_refused() {
        let mut out = Vec::new();
        assert!(matches!(
            encode_row(GgmlType::Q4_K, &[0.0; 100], &mut out),
            Err(EncodeError::NotWholeBlocks { block: 256, .. })
        ));
        let mut x = vec![0.0; 32];
        x[5] = f32::NAN;
        assert!(matches!(
            encode_row(GgmlType::Q8_0, &x, &mut out),
            Err(EncodeError::NonFinite { index: 5, .. })
        ));
        assert!(matches!(
            encode_row(GgmlType::TQ2_0, &[0.0; 256], &mut out),
            Err(EncodeError::Unsupported(_))
        ));
    }
}
