#!/usr/bin/env bash
# launch.bench on one lent H100/H200: bf16, 448x448, train and score, JAX (cuDNN attention, prefix sharing) and the
# PyTorch reference (sdpa, and flash_attention_2 when importable), for each shape of $SHAPES (7b first: a lent device
# has about 15 minutes in all), then the host memory of a 7B import (scripts/import_memory.py). JSON lines go to
# $OUT/bench.jsonl (the 7b train line's compile_s is the 7B train-step compile time) and $OUT/import.jsonl; each
# command's stderr to $OUT/<name>.err.
#
#   OUT=/tmp/out PER_RUN_S=150 SHAPES="7b" bash scripts/gpu_bench.sh
#
# Needs jax, flax, optax, orbax, ml_collections, absl, transformers, torch, PIL; no Grain or TFDS. A module missing
# on the device can travel in a folder on PYTHONPATH (e.g. the venv's site-packages/ml_collections).
set -u
OUT=${OUT:-gpu_bench_out}
PER_RUN_S=${PER_RUN_S:-150}
SHAPES=${SHAPES:-7b}
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

for shape in $SHAPES; do
  bench "$shape-train-jax" --shape=$shape --mode=train --impl=jax --pairs_per_step=2 --remat=dots_no_batch \
      --attention=cudnn
  for attn in $ATTN; do
    bench "$shape-train-torch-$attn" --shape=$shape --mode=train --impl=torch --pairs_per_step=2 --remat=full \
        --torch_attention=$attn
  done
  bench "$shape-score-jax" --shape=$shape --mode=score --impl=jax --edits_per_step=8 --attention=cudnn
  for attn in $ATTN; do
    bench "$shape-score-torch-$attn" --shape=$shape --mode=score --impl=torch --edits_per_step=8 --torch_attention=$attn
  done
done

echo "== import memory, 7b"
timeout "$PER_RUN_S" python scripts/import_memory.py --shape=7b --workdir="${IMPORT_DIR:-/tmp/import7b}" \
    >> "$OUT/import.jsonl" 2> "$OUT/import.err" || echo "!! import memory failed or timed out (status $?)"
