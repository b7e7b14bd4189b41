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
timeout "${STUDY_S:-360}" python3 benchmarks/bench_study.py --runs-per-gpu "${K:-4}" --out "$OUT/bench_study.json" > "$OUT/study.txt" 2>&1
echo "bench_study rc=$?"; tail -40 "$OUT/study.txt"
timeout "${TRAIN_S:-150}" python3 benchmarks/bench_train.py --batches 64 --iters 15 --kinds "reports (eager+attn)" full \
  full+compile-ro "apr (online ref)" "apr (cached ref)" entropy_floor > "$OUT/train.txt" 2>&1
echo "bench_train rc=$?"; tail -12 "$OUT/train.txt"
