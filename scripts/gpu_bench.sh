#!/usr/bin/env bash
# launch.bench on one lent H100/H200: 7b first (then 3b, mimo7b), bf16, 448x448, train and score, JAX and the
# PyTorch reference (sdpa, and flash_attention_2 when importable). JSON lines go to $OUT/bench.jsonl (the 7b train
# line's compile_s is the 7B train-step compile time); each command's stderr to $OUT/<name>.err.
#
#   OUT=/tmp/out PER_RUN_S=240 bash scripts/gpu_bench.sh
#
# Needs jax, flax, optax, orbax, ml_collections, absl, transformers, torch, PIL; no Grain or TFDS. A module missing
# on the device can travel in a folder on PYTHONPATH (e.g. the venv's site-packages/ml_collections).
set -u
OUT=${OUT:-gpu_bench_out}
PER_RUN_S=${PER_RUN_S:-240}
PEAK=${PEAK_TFLOPS:-989}  # H100/H200 bf16 dense
mkdir -p "$OUT"
python - <<'PY' 2>&1 | tee "$OUT/imports.txt"
import importlib
for name in ("jax", "flax", "optax", "orbax.checkpoint", "ml_collections", "absl", "transformers", "torch", "PIL",
             "flash_attn"):
  try:
    importlib.import_module(name)
    print("ok", name)
  except ImportError as e:
    print("missing", name, e)
PY
ATTN="sdpa"
python -c "import flash_attn" 2>/dev/null && ATTN="sdpa flash_attention_2"
COMMON="--dtype=bfloat16 --image_px=448 --text_tokens=150 --steps=5 --warmup=2 --peak_tflops=$PEAK --out=$OUT/bench.jsonl"

bench() {  # name, then launch.bench flags
  local name=$1; shift
  echo "== $name: $*"
  timeout "$PER_RUN_S" python -m launch.bench $COMMON "$@" 2> "$OUT/$name.err" || echo "!! $name failed or timed out (status $?)"
}

for shape in 7b 3b mimo7b; do
  bench "$shape-train-jax" --shape=$shape --mode=train --impl=jax --pairs_per_step=2 --remat=dots_no_batch
  for attn in $ATTN; do
    bench "$shape-train-torch-$attn" --shape=$shape --mode=train --impl=torch --pairs_per_step=2 --remat=full \
        --torch_attention=$attn
  done
  bench "$shape-score-jax" --shape=$shape --mode=score --impl=jax --edits_per_step=8
  bench "$shape-score-jax-prefix" --shape=$shape --mode=score --impl=jax --edits_per_step=8 --prefix_sharing
  for attn in $ATTN; do
    bench "$shape-score-torch-$attn" --shape=$shape --mode=score --impl=torch --edits_per_step=8 --torch_attention=$attn
  done
done
