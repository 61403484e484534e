//! How a layer is ternarized (absmean or GPTQ) and what it costs: error
//! statistics, held-out output errors, and the sensitivities that pick
//! mixed precision under a size budget.

use super::*;

/// A ternarized linear layer.
#[derive(Clone)]
pub(super) struct Ternarized {
    pub(super) codes: Vec<i8>,
    pub(super) scale: Mult,
}

/// Error statistics of `codes * m` against `w`, in one pass (the
/// definitions of [`bitnet_quant::metrics`]).
pub(super) fn compare(w: &[f32], approx: impl Fn(usize) -> f32) -> (f64, f64, f64) {
    let (mut e, mut s, mut a, mut d) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for (i, &x) in w.iter().enumerate() {
        let (x, q) = (f64::from(x), f64::from(approx(i)));
        e += (x - q) * (x - q);
        s += x * x;
        a += q * q;
        d += x * q;
    }
    let n = w.len().max(1) as f64;
    let sqnr = if e == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (s / e).log10()
    };
    let cos = if s == 0.0 || a == 0.0 {
        f64::from(u8::from(s == a))
    } else {
        d / (s.sqrt() * a.sqrt())
    };
    (e / n, sqnr, cos)
}

/// Ternarizes float weights with absmean scales.
pub(super) fn ternarize(
    name: &str,
    w: &[f32],
    rows: usize,
    cols: usize,
    mode: ScaleMode,
) -> Result<Ternarized> {
    let t = quantize(name, w, rows, cols, mode.granularity()).map_err(Error::quant(name))?;
    Ok(Ternarized {
        scale: mode.mult(&t.scales),
        codes: t.codes,
    })
}

/// `w` encoded as `ty` and decoded again, row by row.
pub(super) fn round_trip(name: &str, ty: GgmlType, w: &[f32], cols: usize) -> Result<Vec<f32>> {
    let mut out = vec![0.0f32; w.len()];
    let mut bytes = Vec::new();
    let err = |m: String| Error::TensorData {
        name: name.into(),
        message: m,
    };
    for (row, o) in w.chunks(cols).zip(out.chunks_mut(cols)) {
        bytes.clear();
        encode_row(ty, row, &mut bytes).map_err(|e| err(e.to_string()))?;
        crate::gguf::dequantize_row(ty, &bytes, o).map_err(|e| err(e.to_string()))?;
    }
    Ok(out)
}

/// Sensitivities keyed by `(layer, k)`.
pub(super) type Sensitivity = std::collections::HashMap<(usize, usize), f64>;

/// Every linear's precision: all ternary, the policy's, or the automatic
/// choice under the size budget (with each layer's measured sensitivity).
pub(super) fn precision_choices(
    c: &BitNetConfig,
    opts: &ConvertOptions,
    src: &Source,
    cal: Option<&calib::Calibration>,
    has_lm_head: bool,
) -> Result<(Vec<[LinearPrecision; 7]>, Sensitivity)> {
    let n = c.num_layers;
    let all_ternary = vec![[LinearPrecision::Ternary; 7]; n];
    let auto = match (&opts.policy, &opts.auto_precision) {
        (Some(_), Some(_)) => {
            return Err(Error::Config(
                "give a precision policy or a size budget, not both".into(),
            ));
        }
        (Some(p), None) => return Ok((p.resolve(n)?, Sensitivity::new())),
        (None, None) => return Ok((all_ternary, Sensitivity::new())),
        (None, Some(a)) => *a,
    };
    let Some(cal) = cal else {
        return Err(Error::Config(
            "a size budget needs calibration text (--calib FILE) to measure each layer's \
             sensitivity"
                .into(),
        ));
    };
    let base_plan = plan(c, opts, has_lm_head, &all_ternary)?;
    let base: u64 = base_plan
        .iter()
        .map(|p| store_bytes(p.store, &p.shape))
        .sum();
    if base > auto.budget_bytes {
        return Err(Error::Config(format!(
            "the budget of {} bytes is below the all-ternary size of {base} bytes",
            auto.budget_bytes
        )));
    }
    let ty = auto.promote_to.ggml_type();
    let mut candidates = Vec::new();
    let mut sensitivity = Sensitivity::new();
    for p in &base_plan {
        let Kind::Linear(i, k) = p.kind else { continue };
        let (rows, cols) = (p.shape[0], p.shape[1]);
        if !cols.is_multiple_of(encode::block_len(ty)) {
            continue;
        }
        let hf_name = format!("model.layers.{i}.{}.weight", LINEARS[k].0);
        let w = linear_values(src.linear(i, k)?, cols);
        src.release(&hf_name);
        let held = &cal.held_out[i].inputs[calib::input_of(k)];
        let t = ternarize(&hf_name, &w, rows, cols, opts.scales)?;
        let q = Error::quant(&hf_name);
        let e_ternary = held
            .relative_output_error(&w, &dequant(&t, cols))
            .map_err(q)?;
        let e_dense = held
            .relative_output_error(&w, &round_trip(&hf_name, ty, &w, cols)?)
            .map_err(Error::quant(&hf_name))?;
        sensitivity.insert((i, k), e_ternary);
        candidates.push(policy::Candidate {
            layer: i,
            k,
            gain: e_ternary - e_dense,
            cost: store_bytes(Store::Float(ty), &p.shape)
                .saturating_sub(store_bytes(p.store, &p.shape)),
        });
    }
    let mut choices = all_ternary;
    for (i, k) in policy::choose(candidates, auto.budget_bytes - base) {
        choices[i][k] = LinearPrecision::Float(auto.promote_to);
    }
    Ok((choices, sensitivity))
}

/// Tokenizes the calibration text and runs it through the float model.
pub(super) fn run_calibration(
    input: &Path,
    src: &Source,
    ci: &CalibrationInput,
) -> Result<calib::Calibration> {
    let text = std::fs::read_to_string(&ci.text).map_err(Error::io(&ci.text, "read"))?;
    let tok = crate::tokenizer::TextTokenizer::for_model(input)?;
    let ids = tok.encode(&text, false)?;
    let ctx = ci.ctx.max(2);
    let seqs: Vec<Vec<u32>> = ids
        .chunks_exact(ctx)
        .take(ci.max_tokens / ctx)
        .map(<[u32]>::to_vec)
        .collect();
    if seqs.len() < 4 {
        return Err(Error::InFile {
            path: ci.text.clone(),
            message: format!(
                "{} tokens make {} sequences of {ctx}; calibration needs at least 4 \
                 (three to calibrate, one held out)",
                ids.len(),
                seqs.len()
            ),
        });
    }
    calib::calibrate(src, &seqs)
}

/// GPTQ on the absmean grid of `opts.scales`.
pub(super) fn gptq(
    name: &str,
    w: &[f32],
    rows: usize,
    cols: usize,
    h: &Hessian,
    opts: &ConvertOptions,
) -> Result<Ternarized> {
    let params = GptqParams {
        damp: opts.damp,
        granularity: opts.scales.granularity(),
    };
    let t = gptq_ternary(name, w, rows, cols, h, params, Parallelism::Sequential)
        .map_err(Error::quant(name))?;
    Ok(Ternarized {
        scale: opts.scales.mult(&t.scales),
        codes: t.codes,
    })
}

pub(super) fn dequant(t: &Ternarized, cols: usize) -> Vec<f32> {
    t.codes
        .iter()
        .enumerate()
        .map(|(i, &c)| f32::from(c) * t.scale.at(i, cols))
        .collect()
}

/// Held-out relative output errors: stored weights, plain absmean, and
/// stored weights plus a low-rank correction.
#[allow(clippy::too_many_arguments)]
pub(super) fn output_errors(
    name: &str,
    w: &[f32],
    t: &Ternarized,
    plain: &Ternarized,
    rows: usize,
    cols: usize,
    held: &Hessian,
    opts: &ConvertOptions,
) -> Result<(Option<f64>, Option<f64>, Option<f64>)> {
    let q = Error::quant(name);
    let deq = dequant(t, cols);
    let e = held
        .relative_output_error(w, &deq)
        .map_err(Error::quant(name))?;
    let e0 = held
        .relative_output_error(w, &dequant(plain, cols))
        .map_err(Error::quant(name))?;
    let elr = if opts.low_rank > 0 {
        let lr = low_rank_residual(w, &deq, rows, cols, opts.low_rank, Parallelism::Sequential)
            .map_err(Error::quant(name))?;
        let mut fixed = deq;
        lr.add_to(&mut fixed, cols);
        Some(held.relative_output_error(w, &fixed).map_err(q)?)
    } else {
        None
    };
    Ok((Some(e), Some(e0), elr))
}
