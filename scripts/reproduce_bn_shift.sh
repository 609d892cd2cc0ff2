#!/usr/bin/env bash
# BN when the test data moves (results/bn_shift): the Figure 1 MLP trained on clean MNIST (DATA=mnist,
# the default) or Fashion-MNIST (DATA=fashion_mnist), then evaluated by `bnexp evaluate` on the clean
# test set and on every corruption of bnexp/shift.py with each way of getting BN's statistics.
#
#   bash scripts/reproduce_bn_shift.sh train     # 1) BN, LN, no norm; BN at momentum 0.001, 0.01, 0.5: 5 seeds each
#   bash scripts/reproduce_bn_shift.sh evaluate  # 2) every finished run: running, precise, target, batch modes
#   bash scripts/reproduce_bn_shift.sh report    # 3) report, runs.csv and the verdicts of results/bn_shift/<data>/claims.yaml
#   bash scripts/reproduce_bn_shift.sh records   # the finished runs' records (with their evaluations)
#   bash scripts/reproduce_bn_shift.sh over_training  # BN at momentum 0.001, 0.1, 0.5 again, 5 seeds, a checkpoint
#                                                     # kept every 5,000 steps, each evaluated: running vs precise
#   bash scripts/reproduce_bn_shift.sh figures   # corruptions.png, adapt.png (and over_training.png) from runs.csv
#   bash scripts/reproduce_bn_shift.sh inception # the conv arm: BN-x5 at width 1/8 with BN and GN, 5 seeds each,
#                                                # evaluated (n=512 only: a pass of this net costs ~100x the MLP's),
#                                                # reported with <data>/inception/claims.yaml; SEEDS splits it in lanes
#
# `evaluate` sweeps the target mode's n over 1, 2, 8, 32, 128, 512, 2048 test images, each with no
# prior and a prior of 16 images, and batch mode over shuffled and one-class batches of 60; precise
# statistics average 10,000 training images. A run evaluated before is evaluated again (its
# RUN_DIR/evaluate/step_<step> is replaced whole). Runs go to $BNEXP_RUNS/bn_shift_<data>/<step>
# (default ~/bnexp-runs); run a step again to continue it. Arguments after `train` go to bnexp train.
set -euo pipefail
cd "$(dirname "$0")/.."
bnexp=${BNEXP:-$(command -v bnexp || echo .venv/bin/bnexp)}
python=${PYTHON:-$(dirname "$bnexp")/python}
data=${DATA:-mnist}
case $data in
  mnist | fashion_mnist) ;;
  *) echo "reproduce_bn_shift: DATA must be mnist or fashion_mnist, not '$data'" >&2; exit 2 ;;
esac
out=results/bn_shift/$data
sweeps=${BNEXP_RUNS:-$HOME/bnexp-runs}/bn_shift_$data
common=(experiment=fig1_mnist data="$data" trainer.replicas=5 trainer.progress=false
        'hydra.sweep.subdir=${hydra.job.override_dirname}')

finished_runs() {  # every finished run dir under the sweeps named (a replicated job's seeds: its seed_<s> dirs)
  find "${@/#/$sweeps/}" -name summary.json -not -path '*/evaluate/*' | sort | while read -r summary; do
    grep -qsE '"status": "(completed|diverged)"' "$summary" && dirname "$summary"
  done
}

case "${1:-}" in
  train)
    "$bnexp" train -m "${common[@]}" norm=batch,layer,none hydra.sweep.dir="$sweeps/norms" "${@:2}"
    "$bnexp" train -m "${common[@]}" norm.momentum=0.001,0.01,0.5 hydra.sweep.dir="$sweeps/momentum" "${@:2}" ;;
  evaluate)
    finished_runs norms momentum | while read -r run; do
      "$bnexp" evaluate "$run" --adapt-images 1,2,8,32,128,512,2048 --prior 0,16 \
        --batch-order shuffled,by_class > /dev/null
      echo "evaluated $run"
    done ;;
  report)
    "$bnexp" report "$sweeps/norms" "$sweeps/momentum" --variant-keys norm.name,norm.momentum \
      --baseline norm=batch,norm.momentum=0.1 --claims "$out/claims.yaml" --out "$out" ;;
  records) . scripts/records.sh; save_records "$sweeps" "$out" norms momentum over_training ;;
  over_training)  # the same trainings as the momentum arm (keep_checkpoint_every only keeps more files)
    "$bnexp" train -m "${common[@]}" norm.momentum=0.001,0.1,0.5 trainer.keep_checkpoint_every=5000 \
      hydra.sweep.dir="$sweeps/over_training" "${@:2}"
    finished_runs over_training | while read -r run; do
      "$bnexp" evaluate "$run" --sets clean --modes running,precise --step all > /dev/null
      echo "evaluated $run at every kept step"
    done ;;
  inception)  # as long as Figure 3's BN-x5 (scripts/reproduce_inception.sh: the baseline's length / 6)
    . scripts/inception_lengths.sh
    steps=${STEPS:-$(decayed_steps "$(baseline_steps)" 6)}  # STEPS: a shorter smoke run
    "$bnexp" train -m experiment=bn_x5 scale="inception_${data}_plateau" trainer.max_steps="$steps" norm=batch,group \
      trainer.seed="${SEEDS:-0,1,2,3,4}" trainer.progress=false 'hydra.sweep.subdir=${hydra.job.override_dirname}' \
      hydra.sweep.dir="$sweeps/inception" "${@:2}"
    finished_runs inception | while read -r run; do
      [ -d "$run/evaluate" ] && continue  # evaluated before (a lane's)
      "$bnexp" evaluate "$run" --adapt-images 512 --batch-order shuffled,by_class > /dev/null
      echo "evaluated $run"
    done
    [ -n "${SEEDS:-}" ] && exit 0  # a lane: the report waits for every seed
    "$bnexp" report "$sweeps/inception" --baseline norm=batch --claims "$out/inception/claims.yaml" --out "$out/inception"
    . scripts/records.sh; save_records "$sweeps" "$out/inception" inception ;;
  figures)
    over=(); [ -d "$sweeps/over_training" ] && over=(--over-training "$sweeps/over_training")
    "$python" scripts/bn_shift_figures.py "$out/runs.csv" --out "$out" "${over[@]}" ;;
  *) echo "usage: [DATA=mnist|fashion_mnist] $0 train | evaluate | report | records | over_training | figures | inception [overrides]" >&2
     exit 2 ;;
esac
