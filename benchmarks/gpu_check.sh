#!/usr/bin/env bash
# What a session lent a CUDA machine runs there, in one call of the device tool (a few minutes):
# the CUDA-marked tests, then the VGG16 fine-tuning benchmark (fp32 and bf16, eager and compiled),
# with logs and the benchmark's JSON under $OUT (or ./gpu_out without it).
#   device run: bash benchmarks/gpu_check.sh        (timeout_s about 540)
# The device image's python3 has torch with CUDA; LMDB-reading tests need the lmdb wheel carried
# in .whl (see the device tool's README); without it they are reported, not fatal here.
set -o pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" \
  | tee -a "$OUT/gpu.txt"
timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log"
timeout 400 python3 benchmarks/bench_finetune.py --device cuda --batch 32 --iters 20 \
  --cache-dir /tmp/inductor --json "$OUT/finetune.json" 2>&1 | tee "$OUT/finetune.log"
