#!/usr/bin/env bash
# The paper's ImageNet comparison (sec. 4.2, Figure 3), scaled down to MNIST on a CPU: the five
# models and the two failures the paper names, 3 seeds each, with the Inception-style network at
# width 1/8 and a pooled small stem, run until the baseline plateaus, evaluated on a geometric
# schedule (configs/scale/inception_mnist_plateau.yaml).
#
#   bash scripts/reproduce_inception_mnist.sh lr_sweep  # 0) the baseline's base lr, at 1,000 steps (done: 0.01)
#   bash scripts/reproduce_inception_mnist.sh pilot   # 1) the baseline's length: 3 seeds, plateau table
#   bash scripts/reproduce_inception_mnist.sh main    # 2) the 21 runs, the plateau table and the report
#   bash scripts/reproduce_inception_mnist.sh speed   # 3) the speed setting against plain fp32, same seed
#
# Each step is a sweep in its own directory under $BNEXP_RUNS/inception_mnist; run a step again to
# continue it after an interruption (finished jobs are skipped, stopped ones resume). Arguments
# after the step go to bnexp train, e.g. parallel jobs (on 2 cores, 2-3 one-thread jobs train
# about 1.2x faster in all than one two-thread job):
#   bash scripts/reproduce_inception_mnist.sh main hydra/launcher=joblib hydra.launcher.n_jobs=2
set -euo pipefail
cd "$(dirname "$0")/.."
bnexp=${BNEXP:-$(command -v bnexp || echo .venv/bin/bnexp)}
python=${PYTHON:-$(dirname "$bnexp")/python}
sweeps=${BNEXP_RUNS:-$HOME/bnexp-runs}/inception_mnist
out=results/inception_mnist
scale=(scale=inception_mnist_plateau trainer.progress=false)

case "${1:-}" in
  lr_sweep)
    "$bnexp" train -m experiment=inception scale=inception_mnist_cpu trainer.progress=false \
      optim.lr=0.005,0.01,0.02,0.05 hydra.sweep.dir="$sweeps/lr_sweep"
    "$bnexp" report "$sweeps/lr_sweep" --targets 0.95,0.98 --out "$out/lr_sweep" ;;
  pilot)
    "$bnexp" train -m experiment=inception "${scale[@]}" trainer.max_steps=12000 trainer.seed=0,1,2 \
      hydra.sweep.dir="$sweeps/pilot" "${@:2}"
    "$python" scripts/plateau.py "$sweeps/pilot" --lengths 3000,4000,6000,8000,10000,12000 --out "$out/pilot.md" ;;
  speed)  # seed 0 of BN-x5 again in plain fp32 (contiguous layout), to set beside the main study's seeds
    "$bnexp" train -m experiment=bn_x5 "${scale[@]}" trainer.max_steps=6000 trainer.seed=0 \
      trainer.channels_last=false hydra.sweep.dir="$sweeps/speed" "${@:2}"
    "$python" scripts/same_seed.py "$sweeps/main_fast" "$sweeps/speed" --out "$out/speed.md" ;;
  main)
    # BN-x5, BN-x30, BN-x5-Sigmoid decay 6x faster (every 33 steps): 6,000 steps, lr below 0.1% of its start
    "$bnexp" train -m experiment=bn_x5,bn_x30,bn_x5_sigmoid "${scale[@]}" trainer.max_steps=6000 \
      trainer.seed=0,1,2 hydra.sweep.dir="$sweeps/main_fast" "${@:2}"
    # The baseline's decay (every 200 steps): the preset's 16,000 steps (the pilot's 12,000 and a third more)
    "$bnexp" train -m experiment=inception_x5,inception,bn_baseline,inception_sigmoid "${scale[@]}" \
      trainer.seed=0,1,2 hydra.sweep.dir="$sweeps/main" "${@:2}"
    "$python" scripts/plateau.py "$sweeps/main" --lengths 4000,8000,12000,16000 --out "$out/plateau.md"
    "$bnexp" report "$sweeps/main" "$sweeps/main_fast" --baseline inception --targets 0.95,0.98,0.99 --out "$out" ;;
  *) echo "usage: $0 lr_sweep | pilot | speed | main" >&2; exit 2 ;;
esac
