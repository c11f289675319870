#!/usr/bin/env bash
# The GPU measurements bench/RESULTS.md still lacks, as one prepared command for a short device lease.
#
# Why it exists: a lent H100/H200 comes with minutes, not hours, of device time. Everything that can be
# decided on a CPU is decided here; the lease only runs this script and brings back its files.
#
#   STAGES="d20 trend" bash bench/gpu_session.sh        # choose stages (default: all, in this order)
#
# Stages (each one line of the results; times are rough for one H100/H200, compile included):
#   d20        bench.mfu d20, seq 2048, device batch 32, JAX vs the PyTorch baseline        (~4-5 min)
#   trend      JAX d12, batch 1, 20 steps in bf16 against bench/trend_d12_cpu_fp32.json     (~1 min)
#   d20_chunk  JAX d20 with ce_chunk_size 256 (chunked softcap + cross-entropy)             (~2 min)
#   decode     bench.decode random d20, batch 1 and 32                                      (~2 min)
#   d12, d26   bench.mfu rows for the other depths (d26 at device batch 16)                 (~3 / ~5 min)
#
# Output in $OUT (default runs/gpu_session): session.log (versions, GPU, every stage's output) and one
# JSON per bench.mfu stage; at most 8 files, as the device tool brings back.
#
# The GPU machine has no grain, tensorboardX, rustbpe or ml_collections; the benchmarks do not import
# them. Wheels in .whl/ (see packages.md) are installed first when present, for anything else.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_session}
mkdir -p "$OUT"
LOG="$OUT/session.log"
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 --version
  python3 -m pip list 2>/dev/null | grep -iE "^(jax|jaxlib|jax-cuda13-plugin|jax-cuda13-pjrt|flax|optax|orbax-checkpoint|torch|numpy|nvidia-cudnn-cu1[23]) "
} >>"$LOG" 2>&1

stage() {  # stage NAME COMMAND...: run with a time limit, output appended to the log
  local name=$1
  shift
  echo "== $name: $*" | tee -a "$LOG"
  local t0=$SECONDS
  timeout "${STAGE_TIMEOUT:-480}" "$@" >>"$LOG" 2>&1
  echo "== $name: exit $? after $((SECONDS - t0)) s" | tee -a "$LOG"
}

compare_trend() {  # GPU bf16 losses next to the CPU fp32 run of the same model, init and tokens
  python3 - "$OUT/trend.json" bench/trend_d12_cpu_fp32.json <<'EOF' >>"$LOG" 2>&1
import json, sys
gpu, cpu = (next(r for r in json.load(open(p))["results"] if r["framework"] == "jax") for p in sys.argv[1:])
print("step | GPU bf16 loss | CPU fp32 loss | relative difference")
for i, (g, c) in enumerate(zip(gpu["losses"], cpu["losses"])):
    print(f"{i:4d} | {g:13.4f} | {c:13.4f} | {abs(g - c) / c:.2%}")
EOF
}

for s in ${STAGES:-d20 trend d20_chunk decode d12 d26}; do
  case $s in
    d20) stage d20 python3 -m bench.mfu --depth 20 --device_batch_size 32 --steps 10 --warmup 2 --json "$OUT/d20.json" ;;
    trend)
      stage trend python3 -m bench.mfu --depth 12 --device_batch_size 1 --frameworks jax --steps 18 --warmup 2 --json "$OUT/trend.json"
      compare_trend ;;
    d20_chunk) stage d20_chunk python3 -m bench.mfu --depth 20 --device_batch_size 32 --frameworks jax --ce_chunk_size 256 \
                 --steps 10 --warmup 2 --json "$OUT/d20_chunk.json" ;;
    decode) stage decode python3 -m bench.decode --depth 20 --prompt_tokens 512 --decode_tokens 128 --batch_sizes 1,32 ;;
    d12) stage d12 python3 -m bench.mfu --depth 12 --device_batch_size 32 --steps 10 --warmup 2 --json "$OUT/d12.json" ;;
    d26) stage d26 python3 -m bench.mfu --depth 26 --device_batch_size 16 --grad_accum 2 --steps 6 --warmup 2 --json "$OUT/d26.json" ;;
    *) echo "unknown stage $s (known: d20 trend d20_chunk decode d12 d26)" | tee -a "$LOG" ;;
  esac
done
