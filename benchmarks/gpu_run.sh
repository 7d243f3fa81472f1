#!/usr/bin/env bash
# The prepared GPU run (docs/gpu.md): install the carried wheels if any, check the GPU-only
# tests, run the suite. One command, under 10 minutes on one GPU (tests <= 170 s, suite
# <= 400 s, plus start-up):
#   bash benchmarks/gpu_run.sh            # from the repository root
# Writes benchmarks/results/gpu_suite.json and benchmarks/results/gpu_tests.txt.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
if [ -d wheels ] && ls wheels/*.whl >/dev/null 2>&1; then
  # --no-deps: the wheels are the pinned closure (docs/gpu.md); torch is never touched.
  $PY -m pip install --quiet --no-index --no-deps wheels/*.whl || echo "wheel install failed"
fi
$PY -c "import torch, transformers, trl, accelerate, peft, datasets, rapidfuzz; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO GPU', '| transformers', transformers.__version__, '| trl', trl.__version__)"
mkdir -p benchmarks/results
# The tests that skip without CUDA: fused FlexAttention kernels (forward+backward) against
# SDPA, and FIGA / token-rm under FSDP2 with 1 process (2 processes need 2 GPUs).
timeout 170 $PY -m pytest -q -p no:xdist -p no:cacheprovider -rs \
  "tests/test_shared_prefix.py::test_flex_attention_gpu_logprobs_and_gradients_equal_separate_passes" \
  tests/test_sharded_training.py -k "gpu or fsdp2" 2>&1 | tail -25 | tee benchmarks/results/gpu_tests.txt
timeout 410 $PY benchmarks/gpu_suite.py --budget-s 390 "$@"
