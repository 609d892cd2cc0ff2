#!/usr/bin/env bash
# The paper's ImageNet comparison (sec. 4.2, Figure 3), scaled down to MNIST (DATA=mnist, the
# default; results/inception_mnist) or Fashion-MNIST (DATA=fashion_mnist; results/inception_fmnist)
# on a CPU: the five models and the two failures the paper names, 5 seeds each, with the
# Inception-style network at width 1/8 and a pooled small stem, run until the baseline plateaus,
# evaluated on a geometric schedule (configs/scale/inception_<data>_plateau.yaml).
#
#   bash scripts/reproduce_inception.sh lr_sweep  # 0) the baseline's base lr, at 1,000 steps (MNIST: 0.01)
#   bash scripts/reproduce_inception.sh pilot     # 1) the baseline's length: 3 seeds, plateau table (pilot.md)
#   bash scripts/reproduce_inception.sh main      # 2) the 35 runs, the plateau table and the report
#   bash scripts/reproduce_inception.sh speed     # 3) the speed setting against plain fp32, same seed
#
# `main` is `fast`, `failures`, `slow`, then `report`. Runs are named by their overrides alone
# (model, seed), so MODELS and SEEDS can split a step into lanes that run at once, and a later full
# run of the step skips what the lanes finished. On 2 cores, two one-thread lanes (`speed` needs
# fast's seed 0):
#   (bash scripts/reproduce_inception.sh fast trainer.threads=1
#    bash scripts/reproduce_inception.sh failures trainer.threads=1
#    SEEDS=4 bash scripts/reproduce_inception.sh slow trainer.threads=1) &
#   (SEEDS=0,1,2,3 bash scripts/reproduce_inception.sh slow trainer.threads=1
#    bash scripts/reproduce_inception.sh speed trainer.threads=1) &
#   wait; bash scripts/reproduce_inception.sh report
#
# Each step is a sweep in its own directory under $BNEXP_RUNS/inception_<data>; run a step again to
# continue it after an interruption (finished jobs are skipped, stopped ones resume). `report` keeps
# the runs' records in results/inception_<data>/records; on another machine
#   mkdir -p ~/bnexp-runs/inception_<data> && cp -r results/inception_<data>/records/. ~/bnexp-runs/inception_<data>
# brings the finished runs back (to add seeds to a step, or for results/schedule's report). Arguments
# after the step go to bnexp train, e.g. `main hydra/launcher=joblib hydra.launcher.n_jobs=2`. OUT and
# CLAIMS move the report and its claims file elsewhere (default: the study's folder, its claims.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
bnexp=${BNEXP:-$(command -v bnexp || echo .venv/bin/bnexp)}
python=${PYTHON:-$(dirname "$bnexp")/python}
data=${DATA:-mnist}
case $data in
  mnist) out=results/inception_mnist; targets=0.95,0.98,0.985,0.99 ;;
  fashion_mnist) out=results/inception_fmnist; targets=0.85,0.88,0.9,0.91 ;;
  *) echo "reproduce_inception: DATA must be mnist or fashion_mnist, not '$data'" >&2; exit 2 ;;
esac
out=${OUT:-$out}                   # the study's results (a variant's: scripts/reproduce_inception_gpu.sh)
claims=${CLAIMS:-$out/claims.yaml}  # the claims its report decides
sweeps=${BNEXP_RUNS:-$HOME/bnexp-runs}/inception_$data
seeds=${SEEDS:-0,1,2,3,4}
scale=(scale="inception_${data}_plateau" trainer.progress=false 'hydra.sweep.subdir=${hydra.job.override_dirname}')

. scripts/inception_lengths.sh
. scripts/records.sh
steps=$(baseline_steps)
# BN-x5, BN-x30, BN-x5-Sigmoid decay 6x faster than the baseline (MNIST: 1,500 steps; Fashion-MNIST:
# 4,000). Inception-x5 and Inception-sigmoid, compared with BN-x5 and BN-x5-Sigmoid, train as long.
fast_steps=$(decayed_steps "$steps" 6)
fast() {
  "$bnexp" train -m experiment="${MODELS:-bn_x5,bn_x30,bn_x5_sigmoid}" "${scale[@]}" \
    trainer.max_steps=$fast_steps trainer.seed="$seeds" hydra.sweep.dir="$sweeps/main_fast" "$@"
}
failures() {
  "$bnexp" train -m experiment="${MODELS:-inception_x5,inception_sigmoid}" "${scale[@]}" \
    trainer.max_steps=$fast_steps trainer.seed="$seeds" hydra.sweep.dir="$sweeps/main_failures" "$@"
}
slow() {  # the baseline's decay and length (MNIST: every 80 steps, 8,000 steps): the scale preset's
  "$bnexp" train -m experiment="${MODELS:-inception,bn_baseline}" "${scale[@]}" trainer.seed="$seeds" \
    hydra.sweep.dir="$sweeps/main" "$@"
}
report() {
  local q=$(( steps / 8 ))  # N/4, N/2, 5N/8 .. N: on MNIST 2,000, 4,000, 5,000, 6,000, 7,000, 8,000
  "$python" scripts/plateau.py "$sweeps/main" --name inception --lengths $((2*q)),$((4*q)),$((5*q)),$((6*q)),$((7*q)),$steps \
    --out "$out/plateau.md"
  "$bnexp" report "$sweeps/main" "$sweeps/main_fast" "$sweeps/main_failures" --baseline inception \
    --targets "$targets" --claims "$claims" --out "$out"
  save_records "$sweeps" "$out" main main_fast main_failures  # committed with the study
}

ten_seeds() {  # the report of Inception, BN-Baseline, BN-x5 and Inception-x5 at 10 seeds ($out/ten_seeds)
  "$bnexp" report "$sweeps/main" "$sweeps/main_fast" "$sweeps/main_failures" --baseline inception \
    --targets "$targets" --claims "$claims" --out "$out/ten_seeds"
  # Only seeds 5-9 are recorded there: seeds 0-4 are $out/records already.
  local tmp run
  tmp=$(mktemp -d)
  save_records "$sweeps" "$tmp" main main_fast main_failures
  rm -rf "$out/ten_seeds/records"
  find "$tmp/records" -mindepth 2 -maxdepth 2 -type d -name '*trainer.seed=[5-9]' | while read -r run; do
    mkdir -p "$out/ten_seeds/records/$(basename "$(dirname "$run")")"
    cp -r "$run" "$out/ten_seeds/records/$(basename "$(dirname "$run")")/"
  done
  rm -rf "$tmp"
}

case "${1:-}" in
  lr_sweep)  # MNIST's was made on configs/scale/inception_mnist_cpu (decay every 60 steps)
    if [[ $data == mnist ]]; then sweep=(scale=inception_mnist_cpu); else
      sweep=("${scale[@]}" trainer.max_steps=1000); fi
    "$bnexp" train -m experiment=inception "${sweep[@]}" trainer.progress=false \
      optim.lr=0.005,0.01,0.02,0.05 hydra.sweep.dir="$sweeps/lr_sweep" "${@:2}"
    "$bnexp" report "$sweeps/lr_sweep" --targets "${targets%,*,*}" --out "$out/lr_sweep"
    "$python" scripts/best_lr.py "$sweeps/lr_sweep" --out "$out/lr_sweep/choice.md" ;;
  pilot)  # the baseline's length and decay: Inception evaluated densely (3 seeds unless SEEDS is set), its
    # plateau table at six lengths (pilot.md). MNIST's decayed every 200 steps, to 12,000 steps. Fashion-MNIST's
    # first baseline, decaying every 80 steps to 12,000 (an earlier results/inception_fmnist), still
    # gained 0.24 points over its last quarter; its pilot decays 2x slower, to 24,000.
    if [[ $data == mnist ]]; then pilot=(schedule.decay_steps=200 trainer.max_steps=12000)
      lengths=3000,4000,6000,8000,10000,12000
    else pilot=(schedule.decay_steps=160 trainer.max_steps=24000); lengths=8000,12000,16000,18000,20000,24000; fi
    "$bnexp" train -m experiment=inception "${scale[@]}" "${pilot[@]}" trainer.eval_first=20 trainer.eval_ratio=1.1 \
      trainer.seed="${SEEDS:-0,1,2}" hydra.sweep.dir="$sweeps/pilot" "${@:2}"
    "$python" scripts/plateau.py "$sweeps/pilot" --lengths "$lengths" --out "$out/pilot.md"
    "$bnexp" report "$sweeps/pilot" --targets "$targets" --out "$out/pilot" ;;  # its runs.csv, curves, figures
  speed)  # seed 0 of BN-x5 again in plain fp32 (contiguous layout), to set beside fast's seeds
    "$bnexp" train -m experiment=bn_x5 "${scale[@]}" trainer.max_steps=$fast_steps trainer.seed=0 \
      trainer.channels_last=false hydra.sweep.dir="$sweeps/speed" "${@:2}"
    "$python" scripts/same_seed.py "$sweeps/main_fast" "$sweeps/speed" --out "$out/speed.md" ;;
  fast|failures|slow) "$1" "${@:2}" ;;
  report) report ;;
  ten_seeds) ten_seeds ;;  # after: SEEDS=5,6,7,8,9 MODELS=bn_x5 ... fast, MODELS=inception_x5 failures,
                           # MODELS=inception,bn_baseline slow (results/inception_<data>/ten_seeds/README.md)
  main) fast "${@:2}"; failures "${@:2}"; slow "${@:2}"; report ;;
  *) echo "usage: [DATA=mnist|fashion_mnist] $0 lr_sweep | pilot | main | fast | failures | slow | report | speed | ten_seeds" >&2
     exit 2 ;;
esac
