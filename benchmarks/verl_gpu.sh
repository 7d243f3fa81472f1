#!/usr/bin/env bash
# editalign on verl, one GPU (docs/verl.md). NOT RUN ON A GPU YET: prepared and checked on CPU
# only (tests/plugin_verl: the overrides pass verl's config checks, the reward manager and
# the estimator run on verl's code path with tiny models).
#
#   bash benchmarks/verl_gpu.sh [all|rm|prompts|ppo|dense_group|summary] [STEPS]
#
# Stages, each skipped when its output exists (so a stage can run in its own window):
#   rm           a token reward model on SmolLM2-135M-Instruct from MLQE-PE ro-en post-edits
#                (editalign train token-rm, 300 steps)
#   prompts      ro-en dev prompts as verl's parquet files
#   ppo          verl PPO with a critic (GAE) on the token rewards, STEPS steps (default 15)
#   dense_group  verl with the dense group estimator (4 samples per prompt, no critic)
#   summary      benchmarks/results/verl_gpu/summary.json: each arm's reward course
# Needs a venv with verl[vllm]==0.9.1, editalign and the plugin (docs/verl.md, "Install");
# PYTHON names its python (default .venv-verl-gpu/bin/python). Each arm: ~5-10 min expected
# on one GPU (vLLM start-up twice: the rollout and verl's reward-model server).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv-verl-gpu/bin/python}
STAGE=${1:-all}
STEPS=${2:-15}
WORK=${EDITALIGN_VERL_WORK:-$PWD/runs/verl_gpu}
OUT=benchmarks/results/verl_gpu
mkdir -p "$WORK" "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
# the registrations, loudly, in the driver and every Ray worker (docs/verl.md)
export VERL_USE_EXTERNAL_MODULES=editalign_verl

$PY - <<'EOF' | tee "$OUT/machine.txt"
import platform, torch, transformers, verl, vllm
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO GPU"
print(f"{platform.node()} | {gpu} | torch {torch.__version__} cuda {torch.version.cuda} | "
      f"transformers {transformers.__version__} | verl {verl.__version__} | vllm {vllm.__version__}")
EOF
POLICY=$($PY -c "from editalign.models import resolve_model_path; print(resolve_model_path('smollm2-135m'))")

stage() { [ "$STAGE" = all ] || [ "$STAGE" = "$1" ]; }

if stage rm && [ ! -f "$WORK/rm/reward_config.json" ]; then
  $PY -m editalign.cli train token-rm --model smollm2-135m --preset mlqe-pe \
    --data ../shared/data/mlqe-pe/ro-en-train.tar.gz --granularity space \
    --output_dir "$WORK/rm" --max_steps 300 --per_device_train_batch_size 16 \
    --learning_rate 5e-5 --bf16 --logging_steps 50 --save_strategy no --report_to none \
    > "$OUT/rm.log" 2>&1 || { tail -20 "$OUT/rm.log"; exit 1; }
  grep -E "train_loss" "$OUT/rm.log" || true
fi

if stage prompts && [ ! -f "$WORK/prompts/train.parquet" ]; then
  $PY -m editalign_verl.recipe prompts --preset mlqe-pe \
    --data ../shared/data/mlqe-pe/ro-en-dev.tar.gz --out "$WORK/prompts" --val_size 64
fi

for arm in ppo dense_group; do
  if stage "$arm"; then
    # verl's file logger: one JSON line per step (critic/score/mean, timing_s/step, ...)
    VERL_FILE_LOGGER_PATH="$OUT/$arm.jsonl" timeout 1500 $PY -m editalign_verl.recipe "$arm" \
      --policy "$POLICY" --reward_model "$WORK/rm" --data "$WORK/prompts" --steps "$STEPS" \
      > "$OUT/$arm.log" 2>&1 || echo "$arm: exit $? (log: $OUT/$arm.log)"
    grep -E "step:[0-9]+ " "$OUT/$arm.log" | tail -3 || tail -20 "$OUT/$arm.log"
  fi
done

if stage summary || stage dense_group; then
  logs=$(ls "$OUT"/ppo.jsonl "$OUT"/dense_group.jsonl 2>/dev/null || true)
  if [ -n "$logs" ]; then
    # shellcheck disable=SC2086  # one argument per log file
    $PY -m editalign_verl.recipe summary --data $logs --out "$OUT/summary.json"
  fi
fi
