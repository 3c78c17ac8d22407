#!/usr/bin/env bash
# The GPU checks of issue 7 as one command, for a machine with one NVIDIA GPU,
# JAX (CUDA), flax, optax, orbax, torch and torchvision (no TensorFlow needed).
# Run from the repository root; figures go to $OUT (default ./gpu_out), one
# JSON file per benchmark plus the log. Each stage has its own time limit so
# a slow compile cannot eat the others; the persistent compilation cache lets
# the profile run reuse the first run's compiled train step.
#
#   OUT=/tmp/gpu bash scripts/gpu_benchmarks.sh
set -u
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/mrcnn_jax_jcc}
PY=${PY:-python3}
B=${B:-16}; IB=${IB:-8}; CANVAS=${CANVAS:-800x1344}; BOXES=${BOXES:-24}
t0=$(date +%s)
stage() {  # stage NAME LIMIT_S CMD...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s, at +$(( $(date +%s) - t0 ))s)"
  timeout -k 5 "$limit" "$@"; echo "=== $name exit $? after +$(( $(date +%s) - t0 ))s"
}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
$PY -c "import jax, flax, optax, torch, torchvision; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, 'torchvision', torchvision.__version__)"
stage train_mixed ${T1:-250} $PY scripts/benchmark_train.py --batch $B --canvas $CANVAS \
  --boxes $BOXES --precision mixed --runs 5 --out "$OUT/train_mixed.json"
# The same step with the sequential NMS (the GPU default is the tiled one).
stage train_mixed_seq_nms ${T6:-120} $PY scripts/benchmark_train.py --framework jax --batch $B \
  --canvas $CANVAS --boxes $BOXES --precision mixed --runs 5 --nms sequential \
  --out "$OUT/train_mixed_seq_nms.json"
# The heads on every packed slot at once (the recipe runs them on the filled
# slots, 16 at a time: measured faster on CPU only).
stage train_mixed_chunk0 ${T7:-120} $PY scripts/benchmark_train.py --framework jax --batch $B \
  --canvas $CANVAS --boxes $BOXES --precision mixed --runs 5 \
  --set model.roi_heads.mask.chunk=0 --out "$OUT/train_mixed_chunk0.json"
stage infer_mixed ${T2:-120} env XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 $PY \
  scripts/benchmark_inference.py --batch $IB --precision mixed --runs 5 --out "$OUT/infer_mixed.json"
stage train_profile ${T3:-100} $PY scripts/benchmark_train.py --framework jax --batch $B \
  --canvas $CANVAS --boxes $BOXES --precision mixed --runs 3 --profile --out "$OUT/train_profile.json"
stage train_f32 ${T4:-70} $PY scripts/benchmark_train.py --framework jax --batch $B \
  --canvas $CANVAS --boxes $BOXES --runs 5 --out "$OUT/train_f32.json"
# The ops' tests against torchvision's fixtures, on the GPU this time (no TF needed).
stage gpu_ops_tests ${T5:-45} $PY -m pytest -q -n 0 -p no:cacheprovider tests/test_roi_align.py \
  tests/test_roi_pool.py tests/test_boxes_anchors_nms.py tests/test_targets_losses.py
