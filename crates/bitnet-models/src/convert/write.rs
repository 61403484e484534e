//! Writing one linear layer's data: ternary codes in the target's packing,
//! or a float matrix re-encoded row chunk by row chunk.

use super::*;

/// Writes the ternary layer `t` (`[rows, cols]`) as `store`.
pub(super) fn write_ternary(
    sink: &mut Sink<'_>,
    name: &str,
    t: &Ternarized,
    rows: usize,
    cols: usize,
    store: Store,
) -> Result<()> {
    let q = Error::quant(name);
    let tensor_scale = |what: &str| match &t.scale {
        Mult::Tensor(m) => Ok(*m),
        Mult::Channel(_) | Mult::Group { .. } => Err(Error::TensorData {
            name: name.into(),
            message: format!("has per-channel or per-group scales; {what} holds one per tensor"),
        }),
    };
    sink.start(name)?;
    match store {
        Store::Ternary(TernaryType::I2S) => {
            sink.part(&i2s::pack(&t.codes, tensor_scale("I2_S")?).map_err(q)?)?
        }
        Store::Ternary(tt) => {
            // A row at a time, in runs that share a multiplier: the whole
            // row, or each group (a group is exactly one TQ block).
            let run = match &t.scale {
                Mult::Group { len, .. } => *len,
                _ => cols,
            };
            let mut bytes = Vec::new();
            for (r, row) in t.codes.chunks(cols).enumerate() {
                bytes.clear();
                for (g, codes) in row.chunks(run).enumerate() {
                    let m = t.scale.at(r * cols + g * run, cols);
                    bytes.extend(match tt {
                        TernaryType::Tq1_0 => blocks_to_bytes(
                            &tq1_0::from_ternary(codes, m).map_err(Error::quant(name))?,
                        ),
                        _ => blocks_to_bytes(
                            &tq2_0::from_ternary(codes, m).map_err(Error::quant(name))?,
                        ),
                    });
                }
                sink.part(&bytes)?;
            }
        }
        Store::TernaryF16 => {
            // Bare codes; the scale follows in `<name>.scale`.
            tensor_scale("the F16 fallback")?;
            let m = half::f16::ONE;
            let (pos, neg) = (m.to_le_bytes(), (-m).to_le_bytes());
            let bytes: Vec<u8> = t
                .codes
                .iter()
                .flat_map(|&c| match c {
                    1 => pos,
                    -1 => neg,
                    _ => [0, 0],
                })
                .collect();
            sink.part(&bytes)?
        }
        Store::HfPacked => sink.part(&hf2bit::pack(&t.codes, rows, cols).map_err(q)?)?,
        _ => return Err(Error::Config(format!("internal: `{name}` is not ternary"))),
    }
    sink.end()
}

/// Encodes the float matrix `m` as `store`, in row chunks; returns the
/// error statistics when `measure`.
pub(super) fn write_float_matrix(
    sink: &mut Sink<'_>,
    name: &str,
    m: &FloatMatrix,
    store: Store,
    measure: bool,
) -> Result<Option<(f64, f64, f64)>> {
    let ty = match store {
        Store::Float(t) => t,
        Store::Hf(FloatDtype::F32) => GgmlType::F32,
        Store::Hf(FloatDtype::F16) => GgmlType::F16,
        Store::Hf(FloatDtype::BF16) => GgmlType::BF16,
        _ => return Err(Error::Config(format!("internal: `{name}` is not float"))),
    };
    let (rows, cols) = (m.rows(), m.cols());
    const CHUNK: usize = 1024;
    let mut x = vec![0.0f32; CHUNK * cols];
    let mut y = vec![0.0f32; CHUNK * cols];
    let mut bytes = Vec::new();
    let (mut e, mut s, mut a, mut d) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    sink.start(name)?;
    for r0 in (0..rows).step_by(CHUNK) {
        let n = CHUNK.min(rows - r0);
        for r in 0..n {
            m.row_into(r0 + r, &mut x[r * cols..(r + 1) * cols]);
        }
        // Rows encode independently (Q6_K/Q4_K search per block): in parallel.
        let rows_bytes = x[..n * cols]
            .par_chunks(cols)
            .map(|row| {
                let mut b = Vec::new();
                encode_row(ty, row, &mut b).map(|()| b)
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|err| Error::TensorData {
                name: name.into(),
                message: err.to_string(),
            })?;
        bytes.clear();
        rows_bytes.iter().for_each(|b| bytes.extend_from_slice(b));
        sink.part(&bytes)?;
        if measure {
            crate::gguf::dequantize_row(ty, &bytes, &mut y[..n * cols]).map_err(|err| {
                Error::TensorData {
                    name: name.into(),
                    message: err.to_string(),
                }
            })?;
            for (&p, &q) in x[..n * cols].iter().zip(&y[..n * cols]) {
                let (p, q) = (f64::from(p), f64::from(q));
                e += (p - q) * (p - q);
                s += p * p;
                a += q * q;
                d += p * q;
            }
        }
    }
    sink.end()?;
    Ok(measure.then(|| {
        let n = (rows * cols).max(1) as f64;
        let sqnr = if e == 0.0 {
            f64::INFINITY
        } else {
            10.0 * (s / e).log10()
        };
        (
            e / n,
            sqnr,
            d / (s.sqrt() * a.sqrt()).max(f64::MIN_POSITIVE),
        )
    }))
}
