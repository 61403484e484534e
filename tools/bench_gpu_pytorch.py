#!/usr/bin/env python3
"""PyTorch baseline for the GPU benchmark: prefill and decode tokens/s of transformers'
BitNet (BitNetForCausalLM loaded from an HF packed checkpoint) on one device, batch 1
and batch 16 by default.

    python3 tools/bench_gpu_pytorch.py --model DIR [--device cuda|cpu]
        [--dtype bfloat16|float32] [-p 128] [-n 128] [--batch 1,16] [-r 3]
        [--warmup 1] [--output json|table] [--save-json FILE] [--eager]

DIR is an HF BitNet directory (config.json with a bitnet `quantization_config`, plus
model.safetensors), e.g. from `bitnet-helper-bin synth --preset 2b4t --format hf --out DIR`.
It is loaded with `AutoModelForCausalLM.from_pretrained(DIR, dtype=..., device_map=...)`
exactly as a user would, offline (HF_HUB_OFFLINE=1, local_files_only=True); the
checkpoint's quantization_config selects transformers' BitNet quantizer and its linear
class (reported as `linear_class`; `linear_weight` shows the dtype/shape the weights were
stored in after loading, i.e. whether the packed ternary weights were unpacked at load).

What is measured, for each batch size b (rows of b random token ids, seeded):
  * ppP  (prefill): one forward of the b x P prompt with a fresh KV cache (no reuse across
    repetitions), logits for the last position only, as generate()'s own prefill does.
    tokens/s = b*P / time.
  * tgN  (decode): model.generate(ids, max_new_tokens=N, min_new_tokens=N, do_sample=False,
    pad_token_id=0) -- greedy, KV cache, EOS can't stop it (min_new_tokens), the output
    length is checked. A streamer timestamps every generated token (on CUDA each timestamp
    follows a synchronize; generate() already copies every token to the host), so
    tokens/s = b*(N-1) / (t[token N] - t[token 1]): the N-1 pure one-token decode steps
    after the prefill, at context depth P..P+N (llama-bench calls that "tgN @ dP").
    Each tg row also carries `ts_gen_minus_pp` = b*N / (generate_s - prefill_s), the
    whole generate() call less a separately timed prefill, and `ttft_ms`.
    generate() rather than a hand-written loop over past_key_values: the cache keyword of
    the models' forward is being renamed across transformers 5.x (`past_key_values` ->
    `cache`, deprecated in 5.2x), while generate()'s arguments are stable.
Mean and sample stddev over the -r repetitions, after --warmup untimed runs of both (the
first calls compile transformers' @torch.compile'd BitNet kernels; pass --eager, i.e.
TORCHDYNAMO_DISABLE=1, to run them eagerly; a compile failure falls back to that by
itself, and the rows' `compile` field says so; `recompiles_in_timing` > 0 flags a row
whose timed runs still compiled). Peak device memory (torch.cuda.max_memory_allocated)
is reset before each test. A one-line sanity check first prints the max |logit| of the
last prompt position and whether all logits are finite (also in every row).

Output: --output json (default) prints a JSON list of llama-bench-like rows on stdout
(`model`, `n_prompt`, `n_gen`, `n_batch` = batch size (sequences), `test`, `avg_ts`,
`stddev_ts`, `backend` = "pytorch-transformers", `dtype`, `gpu_info`, `peak_mem_mib`,
`linear_class`, ...); --output table prints a markdown table. Progress goes to stderr.
Exit status 0 when every test ran, 1 when some failed (their errors on stderr), 2 on a
setup error (bad arguments, no CUDA, model not loadable). Only stdlib + torch +
transformers (and accelerate, which transformers' BitNet quantizer requires).
"""

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback

BACKEND = "pytorch-transformers"
PROG = "bench_gpu_pytorch"


def log(*parts):
    print(f"[{PROG}]", *parts, file=sys.stderr, flush=True)


def die(msg, code=2):
    log("ERROR: " + msg)
    sys.exit(code)


def int_list(text):
    try:
        vals = [int(v) for v in str(text).split(",") if v.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers, got {text!r}")
    if not vals:
        raise argparse.ArgumentTypeError("empty list")
    return vals


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        prog="bench_gpu_pytorch.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--model", "-m", required=True, help="HF BitNet checkpoint directory (config.json + model.safetensors)")
    ap.add_argument("--device", choices=["cuda", "cpu"], default=None,
                    help="default: cuda if available, else cpu")
    ap.add_argument("--dtype", choices=["bfloat16", "float32", "float16"], default=None,
                    help="default: bfloat16 on cuda, float32 on cpu")
    ap.add_argument("-p", "--n-prompt", type=int_list, default=[128],
                    help="prompt tokens, comma list allowed (default 128)")
    ap.add_argument("-n", "--n-gen", type=int_list, default=[128],
                    help="generated tokens, comma list allowed; 0 skips decode (default 128)")
    ap.add_argument("--batch", "-b", type=int_list, default=[1, 16],
                    help="batch sizes (sequences), comma list (default 1,16)")
    ap.add_argument("-r", "--repetitions", type=int, default=3, help="timed runs of each test (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs of each test first (default 1)")
    ap.add_argument("--output", "-o", choices=["json", "table"], default="json",
                    help="what goes to stdout (default json)")
    ap.add_argument("--save-json", default=None, metavar="FILE",
                    help="also write the JSON rows to FILE")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random prompts (default 0)")
    ap.add_argument("--threads", "-t", type=int, default=None,
                    help="torch.set_num_threads (CPU); default: torch's")
    ap.add_argument("--eager", action="store_true",
                    help="TORCHDYNAMO_DISABLE=1: run transformers' @torch.compile'd BitNet "
                         "functions eagerly")
    ap.add_argument("--no-sanity", action="store_true", help="skip the logits sanity check")
    args = ap.parse_args(argv)
    for name in ("n_prompt", "batch"):
        if any(v < 1 for v in getattr(args, name)):
            ap.error(f"--{name.replace('_', '-')} values must be >= 1")
    if any(v < 0 for v in args.n_gen):
        ap.error("-n values must be >= 0")
    if args.repetitions < 1:
        ap.error("-r must be >= 1")
    if args.warmup < 0:
        ap.error("--warmup must be >= 0")
    return args


def version_tuple(v):
    out = []
    for part in v.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    while len(out) < 3:
        out.append(0)
    return tuple(out)


def cpu_info():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mean_std(xs):
    m = statistics.fmean(xs)
    s = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return m, s


def is_compile_error(exc):
    """True for failures inside torch.compile (dynamo/inductor/triton), which a rerun with
    dynamo disabled avoids."""
    seen = set()
    e = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        mod = type(e).__module__ or ""
        name = type(e).__name__
        if mod.startswith(("torch._dynamo", "torch._inductor", "triton")) or name in (
                "BackendCompilerFailed", "InductorError", "CompilationError", "CppCompileError"):
            return True
        tb = e.__traceback__
        while tb is not None:
            fn = tb.tb_frame.f_code.co_filename.replace("\\", "/")
            if "/torch/_inductor/" in fn or "/triton/" in fn:
                return True
            tb = tb.tb_next
        e = e.__cause__ or e.__context__
    return False


class StepClock:
    """A generate() streamer that only timestamps: put() is called once with the prompt,
    then once per generated token (all rows of the batch at once)."""

    def __init__(self, sync):
        self.sync = sync
        self.times = []

    def put(self, value):
        self.sync()
        self.times.append(time.perf_counter())

    def end(self):
        pass


def main(argv=None):
    args = parse_args(argv)

    # Offline, before transformers/huggingface_hub are imported.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if args.eager:
        os.environ["TORCHDYNAMO_DISABLE"] = "1"

    model_dir = os.path.abspath(args.model)
    cfg_path = os.path.join(model_dir, "config.json")
    if not os.path.isdir(model_dir):
        die(f"--model {args.model!r} is not a directory")
    if not os.path.isfile(cfg_path):
        die(f"{cfg_path} not found: --model must be an HF checkpoint directory")
    if not any(f.endswith(".safetensors") or f.endswith(".safetensors.index.json") or f.endswith(".bin")
               for f in os.listdir(model_dir)):
        die(f"no weights (*.safetensors) in {model_dir}")
    try:
        with open(cfg_path) as f:
            raw_cfg = json.load(f)
    except (OSError, ValueError) as e:
        die(f"cannot read {cfg_path}: {e}")
    qcfg = raw_cfg.get("quantization_config")
    if not qcfg:
        log(f"WARNING: {cfg_path} has no quantization_config: transformers will load plain "
            "nn.Linear layers, not its BitNet quantized path")

    try:
        import torch
    except Exception as e:  # noqa: BLE001
        die(f"cannot import torch ({type(e).__name__}: {e}); run with the Python that has "
            "torch + transformers installed")
    try:
        import transformers
        from transformers import AutoModelForCausalLM
    except Exception as e:  # noqa: BLE001
        die(f"cannot import transformers ({type(e).__name__}: {e})")
    try:
        from transformers.generation.streamers import BaseStreamer
        Clock = type("StepClock", (StepClock, BaseStreamer), {})
    except Exception:  # noqa: BLE001
        Clock = StepClock

    try:  # no "Loading weights" progress bars in the log
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # noqa: BLE001
        pass
    tf_version = transformers.__version__
    torch_version = torch.__version__
    log(f"python {platform.python_version()}, torch {torch_version} (cuda {torch.version.cuda}), "
        f"transformers {tf_version}")

    # ---- device / dtype -------------------------------------------------------------
    cuda_ok = False
    cuda_err = ""
    try:
        cuda_ok = torch.cuda.is_available()
    except Exception as e:  # noqa: BLE001
        cuda_err = f" ({type(e).__name__}: {e})"
    device = args.device or ("cuda" if cuda_ok else "cpu")
    if device == "cuda" and not cuda_ok:
        die(f"--device cuda but torch.cuda.is_available() is False{cuda_err}: torch {torch_version} "
            f"was built for CUDA {torch.version.cuda}; check the driver (nvidia-smi) and "
            "CUDA_VISIBLE_DEVICES, or pass --device cpu")
    if args.device is None:
        log(f"--device not given: using {device}")
    dtype_name = args.dtype or ("bfloat16" if device == "cuda" else "float32")
    dtype = getattr(torch, dtype_name)
    if args.threads:
        torch.set_num_threads(args.threads)

    if device == "cuda":
        try:
            torch.cuda.init()
            gpu_info = torch.cuda.get_device_name(0)
            props = torch.cuda.get_device_properties(0)
            gpu_mem_mib = props.total_memory / 2**20
        except Exception as e:  # noqa: BLE001
            die(f"CUDA is available but device 0 is unusable: {type(e).__name__}: {e}")

        def sync():
            torch.cuda.synchronize()
    else:
        gpu_info = ""
        gpu_mem_mib = None

        def sync():
            pass
    cpu_name = cpu_info()
    log(f"device {device} ({gpu_info or cpu_name}), dtype {dtype_name}, threads {torch.get_num_threads()}")

    compile_state = "disabled (--eager)" if args.eager else "torch.compile (transformers' BitNet decorators)"

    def disable_compile(exc, what):
        nonlocal compile_state
        log(f"WARNING: torch.compile failed during {what} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:300] if str(exc) else ''}); retrying with dynamo disabled "
            "(transformers' BitNet functions run eagerly). --eager does this from the start.")
        compile_state = f"disabled after compile error in {what}"
        import torch._dynamo
        torch._dynamo.reset()
        torch._dynamo.config.disable = True

    # ---- load -------------------------------------------------------------------------
    kw = {"local_files_only": True}
    # transformers >= 4.56 calls it `dtype`; `torch_dtype` is the older (deprecated) name.
    kw["dtype" if version_tuple(tf_version) >= (4, 56, 0) else "torch_dtype"] = dtype
    if device == "cuda":
        kw["device_map"] = "cuda"

    def load():
        t0 = time.perf_counter()
        m, info = AutoModelForCausalLM.from_pretrained(model_dir, output_loading_info=True, **kw)
        if device == "cpu":
            m = m.to("cpu")
        sync()
        return m, info, time.perf_counter() - t0

    log(f"loading {model_dir} ({kw}) ...")
    try:
        try:
            model, info, load_s = load()
        except Exception as e:  # noqa: BLE001
            # transformers 5.x unpacks the ternary weights with a @torch.compile'd function
            # while loading; a compiler failure there surfaces as "issues during automatic
            # conversion of the weights" (a RuntimeError with no cause attached).
            if args.eager or not (is_compile_error(e) or "conversion" in str(e).lower()):
                raise
            disable_compile(e, "loading")
            model, info, load_s = load()
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        hint = ""
        if "accelerate" in str(e):
            hint = " (transformers' BitNet quantizer needs the `accelerate` package)"
        die(f"from_pretrained failed: {type(e).__name__}: {e}{hint}")
    model.eval()
    log(f"loaded in {load_s:.1f} s")

    # Weights that transformers could not take from the checkpoint are left randomly
    # initialized, with only a warning: refuse to benchmark such a model.
    info = info if isinstance(info, dict) else {}
    tied = bool(raw_cfg.get("tie_word_embeddings", False))

    def _keys(name):
        v = info.get(name) or []
        return [str(k if not isinstance(k, (tuple, list)) else k[0]) for k in v]
    missing = [k for k in _keys("missing_keys")
               if not (tied and k.endswith("lm_head.weight")) and "inv_freq" not in k]
    mismatched = _keys("mismatched_keys")
    unexpected = _keys("unexpected_keys")
    if unexpected:
        log(f"WARNING: {len(unexpected)} checkpoint tensors were not used: {unexpected[:5]}")
    if missing or mismatched:
        die(f"transformers did not load every weight from the checkpoint (missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, shape-mismatched {mismatched[:5]}); the model "
            "would run on random weights")

    # transformers 5.2x (seen in 5.24, not in 5.17) leaves the non-quantized tensors
    # (embeddings, norms) in the checkpoint's dtype when dtype= differs from it, e.g.
    # bf16 embeddings with float32 BitLinears -> "expected m1 and m2 to have the same
    # dtype". Cast those parameters (and weight_scale buffers) to the requested dtype;
    # rotary inv_freq buffers stay float32 as transformers keeps them.
    fixed = []
    for mod_name, mod in model.named_modules():
        for pname, p in list(mod.named_parameters(recurse=False)):
            if p.is_floating_point() and p.dtype != dtype:
                fixed.append(f"{mod_name}.{pname}:{str(p.dtype).replace('torch.', '')}")
                p.data = p.data.to(dtype)
        for bname, b in list(mod.named_buffers(recurse=False)):
            if b is not None and b.is_floating_point() and b.dtype != dtype and bname == "weight_scale":
                fixed.append(f"{mod_name}.{bname}:{str(b.dtype).replace('torch.', '')}")
                setattr(mod, bname, b.to(dtype))
    if fixed:
        log(f"NOTE: {len(fixed)} tensors were not loaded in {dtype_name} (e.g. {', '.join(fixed[:3])}); "
            f"cast them to {dtype_name}")

    # ---- what transformers built ------------------------------------------------------
    config = model.config
    vocab = int(getattr(config, "vocab_size", 0) or raw_cfg.get("vocab_size", 0))
    if vocab < 1:
        die("cannot tell the vocabulary size from the config")
    lin = None
    try:
        lin = model.model.layers[0].self_attn.q_proj
    except Exception:  # noqa: BLE001
        for _, mod in model.named_modules():
            if "bitlinear" in type(mod).__name__.lower():
                lin = mod
                break
    if lin is not None:
        linear_class = f"{type(lin).__module__}.{type(lin).__qualname__}"
        w = getattr(lin, "weight", None)
        linear_weight = (f"{str(w.dtype).replace('torch.', '')}{list(w.shape)}" if w is not None else "?")
        if hasattr(lin, "online_quant"):
            linear_weight += f", online_quant={lin.online_quant}"
    else:
        linear_class, linear_weight = "?", "?"
    counts = {}
    for _, mod in model.named_modules():
        n = type(mod).__name__
        if "linear" in n.lower():
            counts[n] = counts.get(n, 0) + 1
    qc = getattr(config, "quantization_config", None)
    if qc is not None and not isinstance(qc, dict):
        qc = qc.to_dict() if hasattr(qc, "to_dict") else vars(qc)
    def _plain(v):
        return getattr(v, "value", v)  # QuantizationMethod.BITNET -> "bitnet"
    quant_desc = (f"{_plain(qc.get('quant_method'))}/{qc.get('linear_class')}/{qc.get('quantization_mode')}"
                  if qc else "none")
    n_params = sum(p.numel() for p in model.parameters())
    model_bytes = sum(t.numel() * t.element_size() for t in model.parameters()) + \
        sum(b.numel() * b.element_size() for b in model.buffers())
    model_mem_mib = torch.cuda.memory_allocated() / 2**20 if device == "cuda" else None
    log(f"quantization {quant_desc}; linear class {linear_class} (weight {linear_weight}); "
        f"linear modules {counts}; {n_params / 1e6:.1f}M params, {model_bytes / 2**20:.0f} MiB"
        + (f"; {model_mem_mib:.0f} MiB allocated on the GPU" if model_mem_mib is not None else ""))

    try:
        import inspect
        fwd_params = inspect.signature(model.forward).parameters
        lk = {"logits_to_keep": 1} if "logits_to_keep" in fwd_params else {}
    except (TypeError, ValueError):
        lk = {}

    gen = torch.Generator().manual_seed(args.seed)

    def prompt(b, p):
        ids = torch.randint(0, vocab, (b, p), generator=gen, dtype=torch.long).to(device)
        return ids, torch.ones_like(ids)

    def prefill_once(ids, mask):
        sync()
        t0 = time.perf_counter()
        out = model(input_ids=ids, attention_mask=mask, use_cache=True, **lk)
        sync()
        dt = time.perf_counter() - t0
        del out
        return dt

    def generate_once(ids, mask, n):
        clock = Clock(sync)
        sync()
        t0 = time.perf_counter()
        out = model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, eos_token_id=None, pad_token_id=0, streamer=clock)
        sync()
        dt = time.perf_counter() - t0
        seqs = out.sequences if hasattr(out, "sequences") else out
        want = (ids.shape[0], ids.shape[1] + n)
        if tuple(seqs.shape) != want:
            raise RuntimeError(f"generate returned shape {tuple(seqs.shape)}, expected {want}")
        del out, seqs
        return dt, clock.times, t0

    # ---- sanity: first logits ---------------------------------------------------------
    sanity = None
    if not args.no_sanity:
        def sanity_fwd():
            ids, mask = prompt(1, args.n_prompt[0])
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
            return (logits[0, -1].abs().max().item(), bool(torch.isfinite(logits).all().item()),
                    int(logits[0, -1].argmax().item()), tuple(logits.shape))

        with torch.inference_mode():
            try:
                try:
                    maxabs, finite, top, shape = sanity_fwd()
                except Exception as e:  # noqa: BLE001
                    if compile_state.startswith("disabled") or not is_compile_error(e):
                        raise
                    disable_compile(e, "the first forward")
                    maxabs, finite, top, shape = sanity_fwd()
                sanity = {"logits_maxabs": maxabs, "logits_finite": finite}
                log(f"sanity: logits {list(shape)}, last position max|logit| = {maxabs:.4g}, "
                    f"argmax {top}, all finite: {finite}")
                if not finite or not math.isfinite(maxabs):
                    log("WARNING: non-finite logits from transformers' BitNet path on this checkpoint")
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                die(f"the first forward failed: {type(e).__name__}: {e}")
        gen.manual_seed(args.seed)

    # ---- benchmark --------------------------------------------------------------------
    rows, failures = [], []
    test_time = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    base = {
        "model": os.path.basename(model_dir.rstrip("/")),
        "model_filename": model_dir,
        "model_type": f"{raw_cfg.get('model_type', '?')} ({quant_desc})",
        "model_size": model_bytes,
        "model_n_params": n_params,
        "backend": BACKEND,
        "backends": BACKEND,
        "device": device,
        "dtype": dtype_name,
        "gpu_info": gpu_info,
        "cpu_info": cpu_name,
        "n_threads": torch.get_num_threads(),
        "linear_class": linear_class,
        "linear_weight": linear_weight,
        "quantization": quant_desc,
        "compile": compile_state,
        "torch_version": torch_version,
        "transformers_version": tf_version,
        "python_version": platform.python_version(),
        "load_s": round(load_s, 3),
        "model_mem_mib": round(model_mem_mib, 1) if model_mem_mib is not None else None,
        "test_time": test_time,
    }
    if sanity:
        base.update(sanity)

    def compiled_frames():
        # dynamo's count of frames it compiled: growth during timed runs = recompiles there
        try:
            from torch._dynamo.utils import counters
            return int(counters["frames"]["total"])
        except Exception:  # noqa: BLE001
            return 0

    def check_recompiles(before, label):
        grew = compiled_frames() - before
        if grew > 0:
            log(f"WARNING {label}: torch.compile compiled {grew} more frame(s) during the timed runs "
                "(shape-driven recompiles); raise --warmup or use --eager")
        return grew

    def peak_reset():
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def peak_mib():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1) if device == "cuda" else None

    def make_row(test, b, p, n, samples_s, tokens, extra):
        ts = [tokens / s for s in samples_s]
        avg_ts, std_ts = mean_std(ts)
        ns = [int(s * 1e9) for s in samples_s]
        avg_ns, std_ns = mean_std(ns)
        row = dict(base)
        row.update({
            "test": test, "n_prompt": p, "n_gen": n, "n_depth": p if n else 0, "n_batch": b,
            "avg_ns": int(avg_ns), "stddev_ns": int(std_ns), "avg_ts": avg_ts, "stddev_ts": std_ts,
            "samples_ns": ns, "samples_ts": ts,
        })
        row.update(extra)
        row["compile"] = compile_state
        return row

    with torch.inference_mode():
        for b in args.batch:
            for p in args.n_prompt:
                label = f"batch {b}, pp{p}"
                try:
                    ids, mask = prompt(b, p)
                    peak_reset()
                    for _ in range(args.warmup):
                        try:
                            prefill_once(ids, mask)
                        except Exception as e:  # noqa: BLE001
                            if compile_state.startswith("disabled") or not is_compile_error(e):
                                raise
                            disable_compile(e, f"{label} warmup")
                            prefill_once(ids, mask)
                    c0 = compiled_frames()
                    pp = [prefill_once(ids, mask) for _ in range(args.repetitions)]
                    row = make_row(f"pp{p}", b, p, 0, pp, b * p,
                                   {"peak_mem_mib": peak_mib(), "method": "one forward of the prompt, "
                                    "fresh KV cache, last-position logits; t/s = b*p/time",
                                    "recompiles_in_timing": check_recompiles(c0, label)})
                    rows.append(row)
                    log(f"{label}: {row['avg_ts']:.1f} ± {row['stddev_ts']:.1f} t/s "
                        f"({statistics.fmean(pp) * 1e3:.2f} ms)"
                        + (f", peak {row['peak_mem_mib']:.0f} MiB" if device == "cuda" else ""))
                except Exception as e:  # noqa: BLE001
                    traceback.print_exc()
                    failures.append(f"{label}: {type(e).__name__}: {e}")
                    log(f"FAILED {label}: {type(e).__name__}: {str(e)[:500]}")
                    if device == "cuda":
                        torch.cuda.empty_cache()

                for n in args.n_gen:
                    if n == 0:
                        continue
                    if n == 1:
                        log("NOTE: -n 1 has no decode step (its one token comes from the prefill); "
                            "skipped")
                        continue
                    label = f"batch {b}, tg{n} after pp{p}"
                    try:
                        ids, mask = prompt(b, p)
                        peak_reset()
                        for _ in range(args.warmup):
                            try:
                                generate_once(ids, mask, n)
                            except Exception as e:  # noqa: BLE001
                                if compile_state.startswith("disabled") or not is_compile_error(e):
                                    raise
                                disable_compile(e, f"{label} warmup")
                                generate_once(ids, mask, n)
                        dec, tot, ttft, sub = [], [], [], []
                        exact = True
                        c0 = compiled_frames()
                        for _ in range(args.repetitions):
                            pre = prefill_once(ids, mask)
                            total, times, t0 = generate_once(ids, mask, n)
                            tot.append(total)
                            if total > pre:  # else timer noise beat the difference: drop it
                                sub.append(total - pre)
                            if len(times) == n + 1:
                                ttft.append(times[1] - t0)
                                # put #0 is the prompt, put #k the k-th generated token
                                if n >= 2:
                                    dec.append(times[-1] - times[1])
                            else:
                                exact = False
                        if exact:
                            samples, tokens = dec, b * (n - 1)
                            method = ("generate() greedy with KV cache; t/s = b*(n-1)/(t[token n] - "
                                      "t[token 1]) from a per-token streamer clock: pure decode steps")
                        else:
                            samples, tokens = sub, b * n
                            method = ("generate() greedy with KV cache; t/s = b*n/(generate_s - "
                                      "prefill_s) (the streamer clock was not usable here)")
                            log(f"NOTE {label}: the streamer saw an unexpected number of tokens; "
                                "using generate time minus prefill time")
                            if not sub:
                                raise RuntimeError("no usable timing (generate no slower than prefill)")
                        extra = {
                            "peak_mem_mib": peak_mib(),
                            "recompiles_in_timing": check_recompiles(c0, label),
                            "method": method,
                            "ts_gen_minus_pp": statistics.fmean([b * n / s for s in sub]) if sub else None,
                            "ts_e2e": statistics.fmean([b * n / s for s in tot]),
                            "generate_s": statistics.fmean(tot),
                            "ttft_ms": statistics.fmean(ttft) * 1e3 if ttft else None,
                        }
                        row = make_row(f"tg{n}", b, p, n, samples, tokens, extra)
                        rows.append(row)
                        log(f"{label}: {row['avg_ts']:.1f} ± {row['stddev_ts']:.1f} t/s decode "
                            f"({row['avg_ns'] / 1e6 / (n - 1 if exact else n):.2f} ms/step; "
                            f"generate-minus-prefill {extra['ts_gen_minus_pp'] or float('nan'):.1f} t/s; "
                            f"whole generate {extra['generate_s']:.2f} s)"
                            + (f", peak {row['peak_mem_mib']:.0f} MiB" if device == "cuda" else ""))
                    except Exception as e:  # noqa: BLE001
                        traceback.print_exc()
                        failures.append(f"{label}: {type(e).__name__}: {e}")
                        log(f"FAILED {label}: {type(e).__name__}: {str(e)[:500]}")
                        if device == "cuda":
                            torch.cuda.empty_cache()

    # ---- report -----------------------------------------------------------------------
    if args.save_json:
        try:
            with open(args.save_json, "w") as f:
                json.dump(rows, f, indent=2)
                f.write("\n")
        except OSError as e:
            log(f"ERROR: cannot write {args.save_json}: {e}")
            failures.append(f"--save-json: {e}")
    if args.output == "json":
        print(json.dumps(rows, indent=2), flush=True)
    else:
        print(render_table(rows, device), flush=True)
    if failures:
        log(f"{len(failures)} test(s) failed:")
        for f_ in failures:
            log("  " + f_)
        return 1
    return 0


def render_table(rows, device):
    if not rows:
        return "(no results)"
    r0 = rows[0]
    head = (f"{r0['model']} | {r0['model_type']} | linear {r0['linear_class'].rsplit('.', 1)[-1]} "
            f"({r0['linear_weight']}) | {r0['dtype']} on {r0['gpu_info'] or r0['cpu_info']} | "
            f"torch {r0['torch_version']}, transformers {r0['transformers_version']} | {r0['compile']}")
    cols = ["model", "size", "params", "backend", "dtype", "batch", "test", "t/s"]
    if device == "cuda":
        cols.append("peak MiB")
    lines = [head, "", "| " + " | ".join(cols) + " |",
             "|" + "|".join("-" * (len(c) + 2) for c in cols) + "|"]
    for r in rows:
        test = r["test"] + (f" @ d{r['n_depth']}" if r["n_gen"] else "")
        vals = [r["model"], f"{r['model_size'] / 2**20:.1f} MiB", (f"{r['model_n_params'] / 1e9:.2f} B" if r["model_n_params"] >= 1e8 else f"{r['model_n_params'] / 1e6:.2f} M"),
                r["backend"], r["dtype"], str(r["n_batch"]), test,
                f"{r['avg_ts']:.2f} ± {r['stddev_ts']:.2f}"]
        if device == "cuda":
            vals.append(f"{r['peak_mem_mib']:.0f}" if r.get("peak_mem_mib") is not None else "")
        lines.append("| " + " | ".join(vals) + " |")
    tg = [r for r in rows if r["n_gen"]]
    if tg:
        lines.append("")
        lines.append("tg: " + tg[0]["method"] + ". Also per row in JSON: ts_gen_minus_pp "
                     "(b*n/(generate - prefill)), ts_e2e, ttft_ms.")
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        die("interrupted", 130)
