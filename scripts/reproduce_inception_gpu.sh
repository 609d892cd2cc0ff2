#!/usr/bin/env bash
# Figure 3 on Fashion-MNIST on one NVIDIA GPU (results/inception_fmnist_gpu): the study of
# results/inception_fmnist (scale=inception_fashion_mnist_plateau: the same recipe, lengths,
# geometric evaluation and claims file) at network width 1/8, the CPU study's, and at 1/2, 3 seeds
# per model.
#
#   bash scripts/reproduce_inception_gpu.sh run [WIDTH ...]     # train every run (default widths: 0.125 0.5)
#   bash scripts/reproduce_inception_gpu.sh report [WIDTH ...]  # results/inception_fmnist_gpu/width_<W>, verdicts.md
#
# `run` starts every run of the widths at once, each in its own process on the GPU: the BN-x* models'
# three seeds as replicas in one process (README "Replicas"); each seed of a model with dropout
# (Inception, BN-Baseline, Inception-x5, Inception-sigmoid: replicas refuse dropout) alone, in
# channels_last. A network this small keeps a GPU waiting on kernel launches rather than computing,
# so many processes at once use it better than one after another; with NVIDIA's Multi-Process Service
# running (`nvidia-cuda-mps-control -d`) their kernels also run side by side instead of taking turns.
# The 4,000-step runs are niced: the 24,000-step baselines, which set the study's length, keep a core
# each. Runs go to $BNEXP_RUNS/inception_fmnist_gpu/width_<W>, each lane's output beside them
# (<model>-<seed>.log). Ctrl-C or SIGTERM checkpoints every run; `run` again continues the stopped
# ones and skips the finished.
set -euo pipefail
cd "$(dirname "$0")/.."
bnexp=${BNEXP:-$(command -v bnexp || echo .venv/bin/bnexp)}
python=${PYTHON:-$(dirname "$bnexp")/python}
runs=${BNEXP_RUNS:-$HOME/bnexp-runs}/inception_fmnist_gpu
out=results/inception_fmnist_gpu
# Execution settings only (not in the runs' names): the recipe is the scale preset's, unchanged.
gpu=(trainer.device=cuda trainer.threads=1 trainer.eval_batch_size=2000)

# lane NICENESS STEP MODEL SEED WIDTH [OVERRIDE ...]: one of reproduce_inception.sh's steps for one
# model and seed, in the background.
lane() {
  local niceness=$1 step=$2 model=$3 seed=$4 width=$5
  MODELS=$model SEEDS=$seed DATA=fashion_mnist BNEXP_RUNS="$runs/width_$width" BNEXP="$bnexp" PYTHON="$python" \
    nice -n "$niceness" bash scripts/reproduce_inception.sh "$step" model.width="$width" "${gpu[@]}" "${@:6}" \
    > "$runs/width_$width/$model-$seed.log" 2>&1 &
}

run() {
  local width model seed failed=0
  # Checked once here, not by each of the 15 lanes a width starts.
  "$python" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" ||
    { echo "reproduce_inception_gpu: no CUDA device is available to $python" >&2; exit 2; }
  for width in "$@"; do mkdir -p "$runs/width_$width"; done
  trap 'trap "" INT TERM; kill -TERM 0' INT TERM  # background jobs ignore Ctrl-C: pass it (and TERM) on
  for width in "$@"; do
    for model in inception bn_baseline; do
      for seed in 0 1 2; do lane 0 slow $model $seed "$width"; done
    done
  done
  for width in "$@"; do
    for model in bn_x5 bn_x30 bn_x5_sigmoid; do
      lane 10 fast $model 0 "$width" trainer.replicas=3 trainer.channels_last=false
    done
    for model in inception_x5 inception_sigmoid; do
      for seed in 0 1 2; do lane 10 failures $model $seed "$width"; done
    done
  done
  for job in $(jobs -p); do wait "$job" || failed=$((failed + 1)); done
  # After a signal a lane's shell ends at once, its bnexp a moment later: once every run has checkpointed.
  while pgrep -f "hydra.sweep.dir=$runs/" > /dev/null; do sleep 1; done
  if (( failed )); then
    echo "reproduce_inception_gpu: $failed lanes did not finish; their logs: $runs/width_*/*.log" >&2
    return 1
  fi
}

report() {
  local width columns=("CPU, width 1/8=results/inception_fmnist/verdict.csv")
  for width in "$@"; do
    OUT="$out/width_$width" CLAIMS=results/inception_fmnist/claims.yaml BNEXP_RUNS="$runs/width_$width" \
      DATA=fashion_mnist BNEXP="$bnexp" PYTHON="$python" bash scripts/reproduce_inception.sh report
    columns+=("GPU, width $width=$out/width_$width/verdict.csv")
  done
  "$python" scripts/verdict_table.py "${columns[@]}" > "$out/verdicts.md"
}

usage="usage: $0 run | report [WIDTH ...] (a width is a multiple of the paper's filter counts, e.g. 0.125 0.5)"
case "${1:-}" in
  run|report) step=$1; shift ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
widths=("$@")
(( ${#widths[@]} )) || widths=(0.125 0.5)
for width in "${widths[@]}"; do
  [[ $width =~ ^(0*[1-9][0-9]*(\.[0-9]*)?|0*\.[0-9]*[1-9][0-9]*)$ ]] ||
    { echo "reproduce_inception_gpu: '$width' is not a width > 0; $usage" >&2; exit 2; }
done
"$step" "${widths[@]}"
