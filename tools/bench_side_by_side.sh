#!/usr/bin/env bash
# llama.cpp's llama-bench and `bitnet bench` side by side on the same GGUF
# files, alternating A B A B, with the ratio ours / llama.cpp per test.
#
# Run with (quick, 125M-shaped model):
#   tools/bench_side_by_side.sh
# or the real shape:
#   PRESET=2b4t THREADS=1,2 REPS=5 ROUNDS=2 tools/bench_side_by_side.sh
#
# Steps, everything under $WORK (default /tmp/peer-bench):
#  1. llama.cpp's llama-bench and llama-quantize, built (cmake Release,
#     GGML_NATIVE) from the sources vendored in the PyPI sdist of
#     llama-cpp-python (`pip download --no-binary llama-cpp-python --no-build-isolation`, so that
#     pip does not build cmake itself from source to read the metadata; an sdist already in
#     $WORK, or named by $LLAMA_SDIST, is reused), with cmake and ninja from
#     pip in a venv. Built once; delete $WORK/build to rebuild.
#  2. A random model of the preset's shape: `bitnet synth --format gguf:tq2_0
#     --arch bitnet` (llama.cpp's architecture name, no vocabulary), then
#     llama-quantize --allow-requantize to TQ2_0 with the embeddings/output
#     in each of $VARIANTS (q6_k, f16, q8_0, ...). The ternary tensors are
#     re-quantized to TQ2_0, which is exact for ternary values.
#  3. Before each run, waits until the other processes use less than
#     $IDLE_MAX_PCT % of the CPUs for $IDLE_SECS seconds in a row (from
#     /proc/stat), at most $IDLE_TIMEOUT seconds, then warns and runs anyway;
#     the load seen is printed beside the results.
#  4. For each variant and thread count, $ROUNDS rounds of
#     llama-bench -p P -n N -t T -r R -o json, then bitnet bench with the same
#     arguments, and a table of t/s and ratios.
#
# Public tools only: python3 (with venv/pip), a C++ compiler, cargo.
set -euo pipefail

PRESET=${PRESET:-125m}
THREADS=${THREADS:-1,2}
REPS=${REPS:-3}
ROUNDS=${ROUNDS:-2}
N_PROMPT=${N_PROMPT:-128}
N_GEN=${N_GEN:-128}
VARIANTS=${VARIANTS:-q6_k f16}  # also: q8_0 (both engines read it), bf16
WORK=${WORK:-/tmp/peer-bench}
IDLE_MAX_PCT=${IDLE_MAX_PCT:-10}
IDLE_SECS=${IDLE_SECS:-3}
IDLE_TIMEOUT=${IDLE_TIMEOUT:-300}
JOBS=${JOBS:-2}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$WORK/models" "$WORK/results"
log() { echo "[side-by-side] $*" >&2; }

# ---- 1. llama.cpp peer -------------------------------------------------------
build_llama_cpp() {
    if [[ -x $WORK/build/bin/llama-bench && -x $WORK/build/bin/llama-quantize ]]; then
        log "llama.cpp already built in $WORK/build"
        return
    fi
    if [[ ! -x $WORK/venv/bin/cmake ]]; then
        log "venv with cmake and ninja in $WORK/venv"
        python3 -m venv "$WORK/venv"
        "$WORK/venv/bin/pip" install -q cmake ninja scikit-build-core
    fi
    local sdist=${LLAMA_SDIST:-}
    if [[ -z $sdist ]]; then
        sdist=$(ls "$WORK"/llama_cpp_python-*.tar.gz 2>/dev/null | tail -1 || true)
    fi
    if [[ -z $sdist ]]; then
        log "downloading the llama-cpp-python sdist"
        "$WORK/venv/bin/pip" download -q --no-deps --no-binary llama-cpp-python --no-build-isolation llama-cpp-python -d "$WORK"
        sdist=$(ls "$WORK"/llama_cpp_python-*.tar.gz | tail -1)
    fi
    local name
    name=$(basename "$sdist" .tar.gz)
    [[ -d $WORK/$name ]] || tar xzf "$sdist" -C "$WORK"
    local src=$WORK/$name/vendor/llama.cpp
    log "building llama-bench and llama-quantize from $src (-j$JOBS)"
    "$WORK/venv/bin/cmake" -S "$src" -B "$WORK/build" -G Ninja \
        -DCMAKE_MAKE_PROGRAM="$WORK/venv/bin/ninja" -DCMAKE_BUILD_TYPE=Release \
        -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF \
        > "$WORK/configure.log"
    "$WORK/venv/bin/cmake" --build "$WORK/build" --target llama-bench llama-quantize \
        -j"$JOBS" > "$WORK/build.log"
}

# ---- bitnet -------------------------------------------------------------------
build_bitnet() {
    if [[ -n ${BITNET:-} ]]; then
        return
    fi
    log "cargo build --release -p bitnet-cli"
    (cd "$REPO" && cargo build --release -q -p bitnet-cli)
    BITNET=${CARGO_TARGET_DIR:-$REPO/target}/release/bitnet
}

# ---- 2. models ----------------------------------------------------------------
make_models() {
    local base=$WORK/models/$PRESET-tq2_0.gguf
    if [[ ! -f $base ]]; then
        log "bitnet synth --preset $PRESET -> $base"
        "$BITNET" synth --preset "$PRESET" --format gguf:tq2_0 --arch bitnet --out "$base.tmp"
        mv "$base.tmp" "$base"
    fi
    for v in $VARIANTS; do
        local out=$WORK/models/$PRESET-tq2_0-$v.gguf
        if [[ ! -f $out ]]; then
            log "llama-quantize: TQ2_0, embeddings/output $v -> $out"
            "$WORK/build/bin/llama-quantize" --allow-requantize \
                --token-embedding-type "$v" --output-tensor-type "$v" \
                "$base" "$out.tmp" TQ2_0 > "$WORK/models/quantize-$PRESET-$v.log" 2>&1 ||
                { tail -20 "$WORK/models/quantize-$PRESET-$v.log" >&2; exit 1; }
            mv "$out.tmp" "$out"
        fi
    done
}

# ---- 3. idle wait -------------------------------------------------------------
# Busy share of all CPUs over one second, in percent (others' use: we are idle).
cpu_busy_pct() {
    local a b
    a=($(head -1 /proc/stat))
    sleep 1
    b=($(head -1 /proc/stat))
    local idle=$(( (b[4] + b[5]) - (a[4] + a[5]) )) total=0 i
    for i in 1 2 3 4 5 6 7 8; do total=$(( total + b[i] - a[i] )); done
    (( total > 0 )) || total=1
    echo $(( 100 * (total - idle) / total ))
}

LAST_LOAD=?
wait_idle() {
    local start=$SECONDS calm=0 pct
    while :; do
        pct=$(cpu_busy_pct)
        if (( pct < IDLE_MAX_PCT )); then
            calm=$(( calm + 1 ))
            if (( calm >= IDLE_SECS )); then LAST_LOAD=$pct; return; fi
        else
            calm=0
        fi
        if (( SECONDS - start > IDLE_TIMEOUT )); then
            log "WARNING: still ${pct}% busy after ${IDLE_TIMEOUT}s; running anyway (numbers are noisy)"
            LAST_LOAD=$pct
            return
        fi
    done
}

# ---- 4. runs ------------------------------------------------------------------
run_all() {
    local stamp
    stamp=$(date +%Y%m%d-%H%M%S)
    local dir=$WORK/results/$stamp
    mkdir -p "$dir"
    for v in $VARIANTS; do
        local model=$WORK/models/$PRESET-tq2_0-$v.gguf
        for t in ${THREADS//,/ }; do
            for ((r = 1; r <= ROUNDS; r++)); do
                local tag=$v-t$t-r$r
                wait_idle
                log "$tag: llama-bench (load ${LAST_LOAD}%)"
                echo "$LAST_LOAD" > "$dir/$tag.llama.load"
                "$WORK/build/bin/llama-bench" -m "$model" -p "$N_PROMPT" -n "$N_GEN" \
                    -t "$t" -r "$REPS" -o json > "$dir/$tag.llama.json" 2> "$dir/$tag.llama.err" ||
                    { log "llama-bench failed: $(tail -3 "$dir/$tag.llama.err")"; echo '[]' > "$dir/$tag.llama.json"; }
                wait_idle
                log "$tag: bitnet bench (load ${LAST_LOAD}%)"
                echo "$LAST_LOAD" > "$dir/$tag.bitnet.load"
                RUST_BACKTRACE=0 "$BITNET" bench -m "$model" -p "$N_PROMPT" -n "$N_GEN" \
                    -t "$t" -r "$REPS" --output json > "$dir/$tag.bitnet.json" 2> "$dir/$tag.bitnet.err" ||
                    { log "bitnet bench failed: $(tail -1 "$dir/$tag.bitnet.err")"; echo '[]' > "$dir/$tag.bitnet.json"; }
            done
        done
    done
    python3 - "$dir" "$PRESET" <<'EOF'
import glob, json, os, statistics, sys
from collections import defaultdict
d, preset = sys.argv[1], sys.argv[2]
runs = defaultdict(lambda: {"llama": [], "bitnet": [], "bw": [], "load": []})
for f in sorted(glob.glob(os.path.join(d, "*.json"))):
    tag, who = os.path.basename(f).rsplit(".", 2)[:2]
    variant, t, r = tag.rsplit("-", 2)
    load = open(f[:-5] + ".load").read().strip()
    for row in json.load(open(f)):
        test = f"pp{row['n_prompt']}" if row["n_gen"] == 0 else f"tg{row['n_gen']}"
        k = (variant, int(t[1:]), test)
        runs[k][who].append((int(r[1:]), row["avg_ts"]))
        runs[k]["load"].append(load)
        if who == "bitnet" and row.get("bandwidth_fraction") is not None:
            runs[k]["bw"].append(row["bandwidth_fraction"])
def fmt(xs):
    if not xs:
        return "n/a"
    v = [x for _, x in xs]
    return f"{statistics.mean(v):.2f}" + (f" ± {statistics.stdev(v):.2f}" if len(v) > 1 else "")
print(f"\n{preset}: t/s mean ± sd over rounds (each round itself a mean of the repetitions)")
print(f"| {'variant':<8} | thr | {'test':<6} | {'llama.cpp t/s':>16} | {'bitnet t/s':>16} | {'ratio':>6} | {'per-round ratios':<22} | {'bw %':>5} | {'load % A,B':<12} |")
print(f"|{'-'*10}|-----|{'-'*8}|{'-'*17}:|{'-'*17}:|{'-'*7}:|{'-'*24}|{'-'*6}:|{'-'*14}|")
for k in sorted(runs, key=lambda k: (k[0], k[1], k[2][0] != "p", k[2])):
    v = runs[k]
    a, b = dict(v["llama"]), dict(v["bitnet"])
    per = [b[r] / a[r] for r in sorted(a) if r in b and a[r] > 0]
    ratio = (statistics.mean(b.values()) / statistics.mean(a.values())) if a and b else None
    bw = f"{100 * statistics.mean(v['bw']):.0f}" if v["bw"] else "-"
    print(f"| {k[0]:<8} | {k[1]:>3} | {k[2]:<6} | {fmt(v['llama']):>16} | {fmt(v['bitnet']):>16} | "
          f"{(f'{ratio:.2f}' if ratio else 'n/a'):>6} | {' '.join(f'{x:.2f}' for x in per) or 'n/a':<22} | {bw:>5} | "
          f"{','.join(v['load']):<12} |")
print(f"\nratio = bitnet / llama.cpp (higher is better for us); raw JSON in {d}")
EOF
}

build_llama_cpp
build_bitnet
make_models
run_all
