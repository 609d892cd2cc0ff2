#!/usr/bin/env bash
# The paper's ImageNet comparison (sec. 4.2, Figure 3), scaled down to MNIST on a CPU: the five
# models and the two failures the paper names, 3 seeds each, with the Inception-style network at
# width 1/8 and a pooled small stem, run until the baseline plateaus, evaluated on a geometric
# schedule (configs/scale/inception_mnist_plateau.yaml).
#
#   bash scripts/reproduce_inception_mnist.sh lr_sweep  # 0) the baseline's base lr, at 1,000 steps (done: 0.01)
#   bash scripts/reproduce_inception_mnist.sh pilot     # 1) the baseline's length: 3 seeds, plateau table
#   bash scripts/reproduce_inception_mnist.sh main      # 2) the 21 runs, the plateau table and the report
#   bash scripts/reproduce_inception_mnist.sh speed     # 3) the speed setting against plain fp32, same seed
#
# `main` is `fast`, `failures`, `slow`, then `report`. Runs are named by their overrides alone
# (model, seed), so MODELS and SEEDS can split a step into lanes that run at once, and a later full
# run of the step skips what the lanes finished. On 2 cores, two one-thread lanes (`speed` needs
# fast's seed 0):
#   (bash scripts/reproduce_inception_mnist.sh fast trainer.threads=1
#    bash scripts/reproduce_inception_mnist.sh failures trainer.threads=1
#    SEEDS=1,2 MODELS=bn_baseline bash scripts/reproduce_inception_mnist.sh slow trainer.threads=1) &
#   (MODELS=inception bash scripts/reproduce_inception_mnist.sh slow trainer.threads=1
#    SEEDS=0 MODELS=bn_baseline bash scripts/reproduce_inception_mnist.sh slow trainer.threads=1
#    bash scripts/reproduce_inception_mnist.sh speed trainer.threads=1) &
#   wait; bash scripts/reproduce_inception_mnist.sh report
#
# Each step is a sweep in its own directory under $BNEXP_RUNS/inception_mnist; run a step again to
# continue it after an interruption (finished jobs are skipped, stopped ones resume). Arguments
# after the step go to bnexp train, e.g. `main hydra/launcher=joblib hydra.launcher.n_jobs=2`.
set -euo pipefail
cd "$(dirname "$0")/.."
bnexp=${BNEXP:-$(command -v bnexp || echo .venv/bin/bnexp)}
python=${PYTHON:-$(dirname "$bnexp")/python}
sweeps=${BNEXP_RUNS:-$HOME/bnexp-runs}/inception_mnist
out=results/inception_mnist
seeds=${SEEDS:-0,1,2}
scale=(scale=inception_mnist_plateau trainer.progress=false 'hydra.sweep.subdir=${hydra.job.override_dirname}')

# BN-x5, BN-x30, BN-x5-Sigmoid decay 6x faster than the baseline (every 13.3 steps): 1,500 steps,
# lr 0.3% of its start by the end. Inception-x5 and Inception-sigmoid, compared with BN-x5 and
# BN-x5-Sigmoid, train as long as those.
fast_steps=1500
fast() {
  "$bnexp" train -m experiment="${MODELS:-bn_x5,bn_x30,bn_x5_sigmoid}" "${scale[@]}" \
    trainer.max_steps=$fast_steps trainer.seed="$seeds" hydra.sweep.dir="$sweeps/main_fast" "$@"
}
failures() {
  "$bnexp" train -m experiment="${MODELS:-inception_x5,inception_sigmoid}" "${scale[@]}" \
    trainer.max_steps=$fast_steps trainer.seed="$seeds" hydra.sweep.dir="$sweeps/main_failures" "$@"
}
slow() {  # the baseline's decay (every 80 steps) and length (8,000 steps): the preset's
  "$bnexp" train -m experiment="${MODELS:-inception,bn_baseline}" "${scale[@]}" trainer.seed="$seeds" \
    hydra.sweep.dir="$sweeps/main" "$@"
}
report() {
  "$python" scripts/plateau.py "$sweeps/main" --name inception --lengths 2000,4000,5000,6000,7000,8000 \
    --out "$out/plateau.md"
  "$bnexp" report "$sweeps/main" "$sweeps/main_fast" "$sweeps/main_failures" --baseline inception \
    --targets 0.95,0.98,0.985,0.99 --out "$out"
}

case "${1:-}" in
  lr_sweep)
    "$bnexp" train -m experiment=inception scale=inception_mnist_cpu trainer.progress=false \
      optim.lr=0.005,0.01,0.02,0.05 hydra.sweep.dir="$sweeps/lr_sweep"
    "$bnexp" report "$sweeps/lr_sweep" --targets 0.95,0.98 --out "$out/lr_sweep" ;;
  pilot)  # made with the preset's earlier decay, every 200 steps (pilot.md)
    "$bnexp" train -m experiment=inception "${scale[@]}" schedule.decay_steps=200 trainer.max_steps=12000 \
      trainer.eval_first=20 trainer.eval_ratio=1.1 trainer.seed="$seeds" hydra.sweep.dir="$sweeps/pilot" "${@:2}"
    "$python" scripts/plateau.py "$sweeps/pilot" --lengths 3000,4000,6000,8000,10000,12000 --out "$out/pilot.md" ;;
  speed)  # seed 0 of BN-x5 again in plain fp32 (contiguous layout), to set beside fast's seeds
    "$bnexp" train -m experiment=bn_x5 "${scale[@]}" trainer.max_steps=$fast_steps trainer.seed=0 \
      trainer.channels_last=false hydra.sweep.dir="$sweeps/speed" "${@:2}"
    "$python" scripts/same_seed.py "$sweeps/main_fast" "$sweeps/speed" --out "$out/speed.md" ;;
  fast|failures|slow) "$1" "${@:2}" ;;
  report) report ;;
  main) fast "${@:2}"; failures "${@:2}"; slow "${@:2}"; report ;;
  *) echo "usage: $0 lr_sweep | pilot | main | fast | failures | slow | report | speed" >&2; exit 2 ;;
esac
