#!/usr/bin/env bash
# The CUDA backend's checks and benchmarks on an NVIDIA machine, in one
# run of a few minutes: the tests (the batched slots included), `bitnet
# doctor --gpu-bench` (self-test and matmul bandwidth), then a random
# 2B-4T-shaped model benchmarked by `bitnet bench --device cuda` (batch 1
# and 16) and by PyTorch (transformers' BitNet, batch 1 and 16) on the same
# GPU, same checkpoint. Built elsewhere; needs no Rust toolchain here.
#
# usage: tools/gpu_check.sh BIN_DIR OUT_DIR
#   BIN_DIR holds `bitnet` and `cuda-tests` (the bitnet-cuda test binary:
#   cargo test --release -p bitnet-cuda --no-run); OUT_DIR gets the logs.
set -u
bin=${1:?BIN_DIR}
out=${2:?OUT_DIR}
mkdir -p "$out"
repo=$(pwd)
log() { echo "== $* ($(date +%T))"; }

log machine
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'

# NVRTC: the toolkit's, else the one PyTorch's wheels carry.
nvrtc=$(ls /usr/local/cuda/lib64/libnvrtc.so.1* 2>/dev/null | head -1)
[ -z "$nvrtc" ] && nvrtc=$(find / -xdev -name 'libnvrtc.so.1*' 2>/dev/null | head -1)
echo "nvrtc: $nvrtc"
export LD_LIBRARY_PATH="$(dirname "${nvrtc:-/x/x}"):${LD_LIBRARY_PATH:-}"

# The tests find fixtures through the path they were built in.
built_in=$(grep -a -m1 -o '/[[:alnum:]_./-]*/crates/bitnet-cuda' "$bin/cuda-tests" | head -1 | sed 's|/crates/bitnet-cuda||')
if [ -n "$built_in" ] && [ ! -e "$built_in" ]; then
  mkdir -p "$(dirname "$built_in")" && ln -s "$repo" "$built_in"
fi

log tests
BITNET_TEST_CUDA=1 BITNET_TEST_NVRTC=1 timeout 150 "$bin/cuda-tests" --test-threads 1 --nocapture 2>&1 | tee "$out/tests.log"

log doctor
timeout 150 "$bin/bitnet" doctor --quick --gpu-bench 2>&1 | tee "$out/doctor.log"

log "run on cuda (the shipped model)"
"$bin/bitnet" run -m models/bitnet-kjv-5m -p "And the LORD said unto Moses" -n 24 --device cuda 2>&1 | tee "$out/run.log"
"$bin/bitnet" run -m models/bitnet-kjv-5m -p "And the LORD said unto Moses" -n 24 --device cpu 2>&1 | tail -3

log "synthesize 2B-4T (random weights, HF packed)"
timeout 200 "$bin/bitnet" synth --preset 2b4t --format hf --out /tmp/m2b4t 2>&1 | tail -2

log "bitnet bench, CUDA"
timeout 150 "$bin/bitnet" bench -m /tmp/m2b4t -p 128 -n 128 -r 5 --device cuda --profile -o json 2>"$out/bench_bitnet.err" | tee "$out/bench_bitnet.json"
cat "$out/bench_bitnet.err"

log "bitnet bench, CUDA, 16 sequences decoding together (slots)"
timeout 120 "$bin/bitnet" bench -m /tmp/m2b4t -p 0 -n 64 -r 3 --parallel 16 --device cuda -o json 2>"$out/bench_bitnet_b16.err" | tee "$out/bench_bitnet_b16.json"
cat "$out/bench_bitnet_b16.err"

log "PyTorch transformers, same GPU, same checkpoint"
PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 timeout 280 python3 tools/bench_gpu_pytorch.py \
  --model /tmp/m2b4t -p 128 -n 128 --batch 1,16 -r 2 --output json 2>"$out/bench_pytorch.err" | tee "$out/bench_pytorch.json"
tail -5 "$out/bench_pytorch.err"
log done
