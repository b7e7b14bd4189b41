#!/usr/bin/env bash
# One GPU session's benchmarks, each under its own time limit, results under $OUT.
# Run from the repository root on the device machine (wheels for packages missing there in .whl/).
set -u
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
export PYTHONUNBUFFERED=1 ATTNCOLLAPSE_CACHE=${ATTNCOLLAPSE_CACHE:-/tmp/acache}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" | tee -a "$OUT/gpu.txt"
# PART=steps (bench_train + bench_overheads, ~5 min, then the forgetting signal pass) and
# PART=study (~7 min) fit one 10-minute device call each; no PART runs both.
if [ "${PART:-steps}" != study ]; then
  timeout "${TRAIN_S:-150}" python3 benchmarks/bench_train.py --batches 64 --iters 15 --kinds "reports (eager+attn)" full \
    full+compile-ro "full+compile-ro layers" "apr (cached ref)" "apr (cached ref)+compile-ro" \
    "apr (cached ref)+compile-ro layers" entropy_floor+compile-ro "full+compile-ro bf16" \
    > "$OUT/train.txt" 2>&1
  echo "bench_train rc=$?"; tail -12 "$OUT/train.txt"
  timeout "${OVERHEADS_S:-150}" python3 benchmarks/bench_overheads.py --compile reduce-overhead > "$OUT/overheads.txt" 2>&1
  echo "bench_overheads rc=$?"; tail -12 "$OUT/overheads.txt"
  # The forgetting design's per-epoch signal pass against a training epoch at ViT-B/32 shapes (issue 27).
  timeout "${FORGETTING_S:-120}" python3 benchmarks/bench_forgetting.py --device cuda > "$OUT/forgetting.txt" 2>&1
  echo "bench_forgetting rc=$?"; tail -12 "$OUT/forgetting.txt"
fi
if [ "${PART:-study}" != steps ]; then
  # The whole matrix at 1 epoch per run, compiled with CUDA graphs, K runs packed on the GPU.
  timeout "${STUDY_S:-400}" python3 benchmarks/bench_study.py --runs-per-gpu "${K:-2}" --compile "${COMPILE:-reduce-overhead}" \
    --compile-scope "${SCOPE:-layers}" \
    --reports-kinds full lora --out "$OUT/bench_study.json" > "$OUT/study.txt" 2>&1
  echo "bench_study rc=$?"; tail -40 "$OUT/study.txt"
fi
