#!/usr/bin/env bash
# What a session lent a CUDA machine runs there, in one call of the device tool (under ten minutes):
# the VGG16 fine-tuning benchmark (bf16 and fp32, eager and compiled), the CUDA-marked tests, the
# Data layer's img/s per worker on its cores and scoring's ratio to the raw forward (GPU and
# CPU, threads and processes), with logs and the benchmark's JSON under $OUT (or ./gpu_out).
#   device run: bash benchmarks/gpu_check.sh        (timeout_s about 590)
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
# the benchmark first: its rows are printed and written as each one ends, so a stop at the limit
# keeps what finished
timeout 300 python3 benchmarks/bench_finetune.py --device cuda --batch 32 --iters 20 \
  --cache-dir /tmp/inductor --json "$OUT/finetune.json" 2>&1 | tee "$OUT/finetune.log"
timeout 180 python3 -m pytest -q -m gpu -p no:cacheprovider -rs \
  tests/test_solver.py tests/test_compiled_train.py tests/test_faces_detect.py 2>&1 \
  | tee "$OUT/gpu_tests.log"
# img/s per decode worker on this machine's cores: how many workers a GPU like this one needs
timeout 60 python3 benchmarks/bench_data.py --workers 1,2,4,8 --rounds 2 --batches 60 2>&1 \
  | tee "$OUT/data.log"
# scoring against the raw forward, the images prepared in threads and in worker processes: on
# the GPU, then on this machine's many CPU cores
timeout 200 python3 benchmarks/bench_score.py --device cuda --nets small,vgg16 --modes fp32,fast \
  --prepare threads,processes --images 2048 --vgg-images 1024 2>&1 | tee "$OUT/score_cuda.log"
timeout 90 python3 benchmarks/bench_score.py --device cpu --nets small --images 1024 \
  --prepare threads,processes 2>&1 | tee "$OUT/score_cpu.log"
