#!/usr/bin/env bash
# The GPU checks of issue 7 as one command, for a machine with one NVIDIA GPU,
# JAX (CUDA), flax, optax, orbax, torch and torchvision (no TensorFlow needed).
# Run from the repository root; figures go to $OUT (default ./gpu_out), one
# JSON file per benchmark plus the log. Each stage has its own time limit so
# a slow compile cannot eat the others.
#
#   OUT=/tmp/gpu bash scripts/gpu_benchmarks.sh
#
# On a machine with no package registry and no ml_collections (the only
# missing package on the CUDA image used so far), bring its wheel:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl ml_collections==1.1.0
#   (there) pip install --no-index --no-deps --target /tmp/site .whl/*.whl
#           PYTHONPATH=/tmp/site OUT=/tmp/gpu bash scripts/gpu_benchmarks.sh
set -u
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# One compilation cache per stage: a shared one also carries XLA's GPU
# autotuning results from stage to stage, and later stages' compile times
# then say nothing (2026-11-30: 51.6 s cold, 19-22 s after).
JCC=${JAX_COMPILATION_CACHE_DIR:-/tmp/mrcnn_jax_jcc}
PY=${PY:-python3}
B=${B:-16}; IB=${IB:-8}; CANVAS=${CANVAS:-800x1344}; BOXES=${BOXES:-24}
t0=$(date +%s)
stage() {  # stage NAME LIMIT_S CMD...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s, at +$(( $(date +%s) - t0 ))s)"
  JAX_COMPILATION_CACHE_DIR="$JCC/$name" timeout -k 5 "$limit" "$@"; echo "=== $name exit $? after +$(( $(date +%s) - t0 ))s"
}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
$PY -c "import jax, flax, optax, torch, torchvision; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, 'torchvision', torchvision.__version__)"
# In order of what matters, each stage with its own limit (seconds); they sum
# to more than one call of a lent GPU machine allows (about 9.5 minutes), so
# the last stages are cut when the first ones are slow.
# The ops' tests against torchvision's fixtures, on the GPU (no TF needed):
# RoIPool's bin edges, the pasted masks and the keypoint decoding depend on
# float32 division and matmul precision, which differ from a CPU's there;
# the RPN's sparse training form (test_rpn.py) has not run on a GPU yet.
stage gpu_ops_tests ${T1:-150} $PY -m pytest -q -n 0 -p no:cacheprovider -rf --tb=short \
  tests/test_roi_pool.py tests/test_keypoints.py tests/test_roi_align.py \
  tests/test_boxes_anchors_nms.py tests/test_targets_losses.py tests/test_rpn.py
# The whole model on the GPU against torchvision's (on the CPU) with converted
# weights: FPN levels, proposals, detections, pasted masks (PARITY OK / FAIL).
stage parity_maskrcnn ${T2:-120} $PY scripts/check_torchvision_parity.py --model maskrcnn
stage train_mixed ${T3:-150} $PY scripts/benchmark_train.py --batch $B --canvas $CANVAS \
  --boxes $BOXES --precision mixed --runs 5 --out "$OUT/train_mixed.json"
stage infer_mixed ${T4:-80} env XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 $PY \
  scripts/benchmark_inference.py --batch $IB --precision mixed --runs 5 --out "$OUT/infer_mixed.json"
stage train_f32 ${T5:-120} $PY scripts/benchmark_train.py --batch $B --canvas $CANVAS \
  --boxes $BOXES --runs 5 --out "$OUT/train_f32.json"
# The mask head on the filled slots, 16 at a time, as on a CPU (on a GPU it
# runs on every packed slot at once: measured faster on 2026-11-30).
stage train_mixed_chunked ${T6:-100} $PY scripts/benchmark_train.py --framework jax --batch $B \
  --canvas $CANVAS --boxes $BOXES --precision mixed --runs 5 \
  --chunk-backends cpu,gpu --out "$OUT/train_mixed_chunked.json"
stage train_profile ${T7:-100} $PY scripts/benchmark_train.py --framework jax --batch $B \
  --canvas $CANVAS --boxes $BOXES --precision mixed --runs 3 --profile-only --out "$OUT/train_profile.json"
# A larger batch (the figures above use 16, 14 GiB of the H200's 139).
stage train_mixed_b32 ${T8:-150} $PY scripts/benchmark_train.py --batch 32 --canvas $CANVAS \
  --boxes $BOXES --precision mixed --runs 5 --out "$OUT/train_mixed_b32.json"
stage parity_keypointrcnn ${T9:-150} $PY scripts/check_torchvision_parity.py --model keypointrcnn
