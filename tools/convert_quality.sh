#!/bin/sh
# What each conversion method costs in quality, end to end, on one float model:
# perplexity on held-out text and KL divergence against the float model itself, plus file
# size, for plain absmean (per tensor, per channel, per 256-group), GPTQ (the same three), mixed precision by policy and
# by size budget, and all-int8. The float model runs in our engine with every layer kept in
# f32 (its perplexity checks against PyTorch's in reference.json when the model came from
# tools/train_float_reference.py).
#
#   sh tools/convert_quality.sh FLOAT_DIR HELDOUT.txt CALIB.txt [OUT_DIR]
#
# e.g. after tools/train_float_reference.py --out /tmp/kjv-float:
#   sh tools/convert_quality.sh /tmp/kjv-float /tmp/kjv-float/heldout.txt /tmp/kjv-float/calib.txt
#
# Prints a Markdown table; OUT_DIR (default: a temporary directory) keeps the files and
# each run's JSON. Needs `bitnet` (BITNET=path, default target/release/bitnet) and python3.
set -eu
float=$1
heldout=$2
calib=$3
out=${4:-$(mktemp -d)}
bitnet=${BITNET:-target/release/bitnet}
threads=${THREADS:-2}
ctx=${CTX:-256}
mkdir -p "$out"
export RUST_BACKTRACE=0

# Each model in its own directory: a tokenizer.json beside a GGUF file would take
# precedence over none, and the converted files carry their own.
convert() { # NAME ARGS...
    name=$1
    shift
    mkdir -p "$out/$name"
    if ! "$bitnet" convert "$float" "$out/$name/model.gguf" --force -q "$@" \
        >"$out/$name/convert.log" 2>&1; then
        cat "$out/$name/convert.log" >&2
        exit 1
    fi
}
score() { # NAME [--save-logits F | --kl-base F]
    name=$1
    shift
    "$bitnet" perplexity -m "$out/$name/model.gguf" -f "$heldout" --ctx "$ctx" -t "$threads" \
        --output json "$@" 2>/dev/null >"$out/$name/perplexity.json"
}

printf 'default = "f32"\n' >"$out/all-f32.toml"
printf 'default = "int8"\n' >"$out/all-int8.toml"
cat >"$out/ends-int8.toml" <<'EOF'
default = "ternary"
[[rules]]
match = "blk.{first}.*"
precision = "int8"
[[rules]]
match = "blk.{last}.*"
precision = "int8"
EOF

convert float --to gguf:i2_s --embeddings f32 --precision-policy "$out/all-f32.toml"
score float --save-logits "$out/float.logprobs"

# name | convert arguments
while IFS='|' read -r name args; do
    # shellcheck disable=SC2086 # the arguments are words on purpose
    convert "$name" $args
    score "$name" --kl-base "$out/float.logprobs"
done <<EOF
absmean|--to gguf:i2_s
absmean-channel|--to gguf:tq2_0 --scales channel
absmean-group|--to gguf:tq2_0 --scales group
gptq|--to gguf:i2_s --method gptq --calib $calib --calib-tokens 16384
gptq-channel|--to gguf:tq2_0 --scales channel --method gptq --calib $calib --calib-tokens 16384
gptq-group|--to gguf:tq2_0 --scales group --method gptq --calib $calib --calib-tokens 16384
ends-int8|--to gguf:i2_s --precision-policy $out/ends-int8.toml
budget|--to gguf:i2_s --calib $calib --calib-tokens 16384 --budget-mib ${BUDGET_MIB:-4}
all-int8|--to gguf:i2_s --precision-policy $out/all-int8.toml
EOF

python3 - "$out" "$float" <<'EOF'
import json, os, sys
out, float_dir = sys.argv[1], sys.argv[2]
names = ["float", "absmean", "absmean-channel", "absmean-group", "gptq", "gptq-channel",
         "gptq-group", "ends-int8", "budget", "all-int8"]
print("| model | file MiB | perplexity | KL vs float | same top-1 |")
print("|---|---:|---:|---:|---:|")
for n in names:
    p = json.load(open(os.path.join(out, n, "perplexity.json")))
    size = os.path.getsize(os.path.join(out, n, "model.gguf")) / 2**20
    kl = p.get("kl_divergence")
    klt = f"{kl['mean']:.4f} ± {kl['stderr']:.4f}" if kl else "-"
    top = f"{100 * kl['same_top_token']:.1f}%" if kl else "-"
    print(f"| {n} | {size:.2f} | {p['perplexity']:.3f} ± {p['perplexity_stderr']:.3f} | {klt} | {top} |")
ref = os.path.join(float_dir, "reference.json")
if os.path.exists(ref):
    r = json.load(open(ref))
    print(f"\nPyTorch's perplexity of the same float weights: {r['perplexity_bf16_weights']:.3f} "
          f"({r['scored']} tokens scored)")
EOF
echo "files and JSON in $out" >&2
