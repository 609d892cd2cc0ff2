#!/usr/bin/env bash
# The paper's ImageNet comparison (sec. 4.2, Figure 3), scaled down to MNIST on a CPU: the five
# models and the two failures the paper names, 3 seeds each, with the Inception-style network at
# width 1/8 and a pooled small stem (3a at 14x14), 1,000 steps of 32 examples each
# (configs/scale/inception_mnist_cpu.yaml).
#
#   bash scripts/reproduce_inception_mnist.sh lr_sweep   # 1) the baseline's LR sweep (4 runs)
#   BASE_LR=0.02 bash scripts/reproduce_inception_mnist.sh main   # 2) the 21 runs and the report
#
set -euo pipefail
cd "$(dirname "$0")/.."
bnexp=${BNEXP:-$(command -v bnexp || echo .venv/bin/bnexp)}
sweeps=${BNEXP_RUNS:-$HOME/bnexp-runs}/inception_mnist
stamp=$(date +%Y-%m-%d_%H-%M-%S)
out=results/inception_mnist
scale=(scale=inception_mnist_cpu trainer.progress=false)  # configs/scale/inception_mnist_cpu.yaml

case "${1:-}" in
  lr_sweep)
    "$bnexp" train -m experiment=inception "${scale[@]}" optim.lr=0.005,0.01,0.02,0.05 \
      hydra.sweep.dir="$sweeps/lr_sweep_$stamp"
    "$bnexp" report "$sweeps/lr_sweep_$stamp" --targets 0.95,0.98 --out "$out/lr_sweep" ;;
  main)
    : "${BASE_LR:?set BASE_LR to the learning rate the lr_sweep chose}"
    "$bnexp" train -m \
      experiment=inception,bn_baseline,bn_x5,bn_x30,bn_x5_sigmoid,inception_x5,inception_sigmoid \
      "${scale[@]}" optim.lr="$BASE_LR" trainer.seed=0,1,2 hydra.sweep.dir="$sweeps/main_$stamp"
    "$bnexp" report "$sweeps/main_$stamp" --baseline inception --targets 0.95,0.98,0.99 --out "$out" ;;
  *) echo "usage: $0 lr_sweep | main" >&2; exit 2 ;;
esac
