//! The generation loop on the tiny transformers-made checkpoints: batched
//! forward passes and batched generation equal one sequence at a time, a
//! session reuses its cached prefix, stop ids and stop strings end the
//! text where they should, and one decoder layer fed the reference's input
//! gives the reference's output.

use bitnet_core::{Parallelism, build_pool};
use bitnet_inference::generate::{BatchRequest, Session, generate, generate_batch};
use bitnet_inference::text::TokenizerDecoder;
use bitnet_inference::{
    BatchEntry, BitNetModel, FinishReason, GenerateParams, Logits, PieceDecoder, SamplerParams,
    Stage, Workspace,
};
use bitnet_models::tokenizer::TextTokenizer;

mod common;
use common::{Expected, dir, logits, max_abs_diff};

const SEQ: Parallelism<'static> = Parallelism::Sequential;

fn prompts(exp: &Expected) -> Vec<Vec<u32>> {
    (0..3).map(|p| exp.ids(&format!("ids_p{p}"))).collect()
}

#[test]
fn one_layer_fed_the_reference_input_gives_its_output() {
    for variant in [
        "float",
        "online",
        "autobitlinear_offline",
        "bitlinear_offline",
    ] {
        let model = BitNetModel::from_hf_dir(&dir(variant)).unwrap();
        let exp = Expected::load(variant);
        let got = model.hidden_states(&exp.ids("ids_p1"), 1, SEQ).unwrap();
        let want = exp.f32("hidden1_p1");
        let diff = max_abs_diff(&got, &want);
        let magnitude = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        eprintln!("{variant}: layer 0 max diff {diff:.2e}, values up to {magnitude:.1}");
        // 1e-5 relative to the values (f32 sums in another order).
        assert!(
            diff < 1e-5 * magnitude,
            "{variant}: layer 0 output differs by {diff}"
        );
    }
}

#[test]
fn batched_forward_equals_one_sequence_at_a_time() {
    let model = BitNetModel::from_hf_dir(&dir("autobitlinear_offline")).unwrap();
    let exp = Expected::load("autobitlinear_offline");
    let prompts = prompts(&exp);
    let pool = build_pool(2).unwrap();
    for par in [SEQ, Parallelism::Pool(&pool)] {
        let mut caches: Vec<_> = prompts.iter().map(|_| model.new_cache(64)).collect();
        let mut ws = Workspace::new();
        let mut batch: Vec<BatchEntry<'_>> = prompts
            .iter()
            .zip(caches.iter_mut())
            .map(|(ids, cache)| BatchEntry { ids, cache })
            .collect();
        let all = model
            .forward_batch(&mut batch, Logits::All, &mut ws, par)
            .unwrap()
            .to_vec();
        let vocab = model.config().vocab_size;
        let mut row = 0;
        for ids in &prompts {
            let alone = logits(&model, ids);
            let diff = max_abs_diff(&all[row * vocab..(row + ids.len()) * vocab], &alone);
            assert!(diff < 1e-4, "batched vs alone: {diff}");
            row += ids.len();
        }
        // A second step: one token each, different positions per sequence.
        let next = [5u32, 6, 7];
        let mut batch: Vec<BatchEntry<'_>> = next
            .iter()
            .zip(caches.iter_mut())
            .map(|(id, cache)| BatchEntry {
                ids: std::slice::from_ref(id),
                cache,
            })
            .collect();
        let last = model
            .forward_batch(&mut batch, Logits::Last, &mut ws, par)
            .unwrap()
            .to_vec();
        for (i, (ids, &id)) in prompts.iter().zip(&next).enumerate() {
            let mut longer = ids.clone();
            longer.push(id);
            let alone = logits(&model, &longer);
            let want = &alone[(longer.len() - 1) * vocab..];
            let diff = max_abs_diff(&last[i * vocab..(i + 1) * vocab], want);
            assert!(diff < 1e-4, "step 2, sequence {i}: {diff}");
        }
    }
}

/// `bitnet bench --profile`'s stage timing: the same logits to the bit
/// with it on, one count per pass, time in the stages every pass runs, and
/// none kept once it is turned off.
#[test]
fn timing_the_stages_changes_no_logits() {
    let model = BitNetModel::from_hf_dir(&dir("bitlinear_offline")).unwrap();
    let exp = Expected::load("bitlinear_offline");
    let ids = exp.ids("ids_p1");
    let pool = build_pool(2).unwrap();
    let run = |timed: bool| {
        let mut cache = model.new_cache(64);
        let mut ws = Workspace::new();
        ws.time_stages(timed);
        let mut out = Vec::new();
        for chunk in [&ids[..ids.len() - 1], &ids[ids.len() - 1..]] {
            let mut batch = [BatchEntry {
                ids: chunk,
                cache: &mut cache,
            }];
            let logits = model
                .forward_batch(&mut batch, Logits::Last, &mut ws, Parallelism::Pool(&pool))
                .unwrap();
            out.extend(logits.iter().map(|v| v.to_bits()));
        }
        (out, ws.stage_times().cloned())
    };
    let (plain, none) = run(false);
    let (timed, times) = run(true);
    assert_eq!(plain, timed);
    assert!(none.is_none());
    let times = times.expect("timing was on");
    assert_eq!(times.passes, 2);
    for stage in [Stage::Qkv, Stage::GateUp, Stage::Down, Stage::Output] {
        assert!(times.get(stage).as_nanos() > 0, "{stage:?} took no time");
    }
    assert_eq!(
        times.total(),
        Stage::ALL
            .iter()
            .map(|&s| times.get(s))
            .sum::<std::time::Duration>()
    );
    let mut ws = Workspace::new();
    ws.time_stages(true);
    ws.time_stages(false);
    assert!(ws.stage_times().is_none());
}

#[test]
fn batched_generation_equals_single_and_sessions_reuse_prefixes() {
    let model = BitNetModel::from_hf_dir(&dir("bitlinear_offline")).unwrap();
    let exp = Expected::load("bitlinear_offline");
    let prompts = prompts(&exp);
    let params: Vec<GenerateParams> = (0..3)
        .map(|i| GenerateParams {
            max_tokens: 4 + 2 * i,
            sampler: SamplerParams {
                temperature: if i == 1 { 0.8 } else { 0.0 },
                seed: 9,
                ..SamplerParams::default()
            },
            ignore_eos: true,
            ..GenerateParams::default()
        })
        .collect();
    let singles: Vec<Vec<u32>> = prompts
        .iter()
        .zip(&params)
        .map(|(p, params)| {
            let mut s = Session::new(&model, 64);
            generate(&model, &mut s, p, params, None, SEQ, |_, _| true)
                .unwrap()
                .tokens
        })
        .collect();
    let mut sessions: Vec<Session> = (0..3).map(|_| Session::new(&model, 64)).collect();
    let mut requests: Vec<BatchRequest<'_>> = sessions
        .iter_mut()
        .zip(&prompts)
        .zip(&params)
        .map(|((session, prompt), params)| BatchRequest {
            session,
            prompt,
            params,
            decoder: None,
        })
        .collect();
    let mut streamed = vec![Vec::new(); 3];
    let out = generate_batch(&model, &mut requests, SEQ, |i, id, _| {
        streamed[i].push(id);
        true
    })
    .unwrap();
    for i in 0..3 {
        assert_eq!(out[i].tokens, singles[i], "sequence {i}");
        assert_eq!(streamed[i], singles[i]);
        assert_eq!(out[i].finish, FinishReason::Length);
        assert_eq!(out[i].tokens.len(), params[i].max_tokens);
    }
    // Next turn: the session holds prompt + generation (but the last token),
    // so only the new tokens run, and the result equals a fresh session's.
    let session = &mut sessions[0];
    let mut turn2 = prompts[0].clone();
    turn2.extend(&out[0].tokens);
    turn2.extend([11, 12]);
    let cached = session.tokens().len();
    assert_eq!(cached, prompts[0].len() + out[0].tokens.len() - 1);
    let again = generate(&model, session, &turn2, &params[0], None, SEQ, |_, _| true).unwrap();
    assert_eq!(again.prompt_tokens_computed, turn2.len() - cached);
    let mut fresh = Session::new(&model, 64);
    let want = generate(&model, &mut fresh, &turn2, &params[0], None, SEQ, |_, _| {
        true
    })
    .unwrap();
    assert_eq!(again.tokens, want.tokens);
    assert_eq!(want.prompt_tokens_computed, turn2.len());
}

#[test]
fn stop_ids_strings_and_cancel() {
    let d = dir("bitlinear_offline");
    let model = BitNetModel::from_hf_dir(&d).unwrap();
    let tok = TextTokenizer::from_file(&d.join("tokenizer.json")).unwrap();
    let exp = Expected::load("bitlinear_offline");
    let prompt = exp.ids("ids_p1");
    let greedy = exp.ids("greedy_p1");
    let run = |params: &GenerateParams, cancel_after: usize| {
        let mut session = Session::new(&model, 64);
        let mut decoder = TokenizerDecoder::new(&tok, true);
        let mut n = 0;
        generate(
            &model,
            &mut session,
            &prompt,
            params,
            Some(&mut decoder as &mut dyn PieceDecoder),
            SEQ,
            |_, _| {
                n += 1;
                n < cancel_after
            },
        )
        .unwrap()
    };
    let base = GenerateParams {
        max_tokens: greedy.len(),
        ignore_eos: true,
        ..GenerateParams::default()
    };
    let full = run(&base, usize::MAX);
    assert_eq!(full.tokens, greedy);
    assert_eq!(full.text, tok.decode(&greedy, true).unwrap());

    let by_id = run(
        &GenerateParams {
            stop_token_ids: vec![greedy[2]],
            ..base.clone()
        },
        usize::MAX,
    );
    let first = greedy.iter().position(|&t| t == greedy[2]).unwrap();
    assert_eq!(by_id.tokens, greedy[..=first]);
    assert_eq!(by_id.finish, FinishReason::StopToken(greedy[2]));

    // A stop string from the middle of the text: output stops right before it.
    let chars: Vec<char> = full.text.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let by_text = run(
        &GenerateParams {
            stop_strings: vec![stop.clone()],
            ..base.clone()
        },
        usize::MAX,
    );
    let cut = full.text.find(&stop).unwrap();
    assert_eq!(by_text.text, full.text[..cut]);
    assert_eq!(by_text.finish, FinishReason::StopString(stop));

    let cancelled = run(&base, 3);
    assert_eq!(cancelled.tokens.len(), 3);
    assert_eq!(cancelled.finish, FinishReason::Cancelled);
}

#[test]
fn perplexity_equals_the_one_from_transformers_logits() {
    use bitnet_inference::perplexity::{Chunking, log_softmax, perplexity};
    let model = BitNetModel::from_hf_dir(&dir("online")).unwrap();
    let exp = Expected::load("online");
    let ids = exp.ids("ids_p2");
    let reference = exp.f32("logits_p2");
    let vocab = model.config().vocab_size;
    let chunking = Chunking::new(ids.len(), ids.len()).unwrap();
    let mut nll = 0.0f64;
    let mut row = vec![0.0; vocab];
    for pos in chunking.first_scored()..ids.len() - 1 {
        log_softmax(&reference[pos * vocab..(pos + 1) * vocab], &mut row);
        nll -= f64::from(row[ids[pos + 1] as usize]);
    }
    let want = (nll / chunking.scored_per_chunk() as f64).exp();
    let got = perplexity(&model, &ids, chunking, None, SEQ, None, None, |_, _, _| {}).unwrap();
    assert_eq!(got.count, chunking.scored_per_chunk());
    let rel = (got.perplexity() - want).abs() / want;
    assert!(
        rel < 1e-4,
        "ours {} vs transformers {want}",
        got.perplexity()
    );
}
