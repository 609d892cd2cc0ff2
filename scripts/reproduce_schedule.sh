#!/usr/bin/env bash
# Is the paper's "14x" BN, or the 6x faster learning-rate decay of its BN-x5 recipe? BN-x5 with its
# decay sped up 1x, 2x, 3x and 6x (the paper's) against the Inception baseline, 5 seeds each, on the
# network and recipe of the Figure 3 study of one dataset (configs/scale/inception_<data>_plateau.yaml).
#
#   DATA=mnist bash scripts/reproduce_schedule.sh baseline   # the Inception baseline, 5 seeds (8,000 steps on MNIST)
#                                                            # = the Figure 3 study's (reproduce_inception.sh slow)
#   DATA=mnist bash scripts/reproduce_schedule.sh bn_x5      # BN-x5 at each decay speed-up, 5 seeds each
#   DATA=mnist bash scripts/reproduce_schedule.sh report     # runs.csv, report, verdict: results/schedule/mnist
#   DATA=mnist bash scripts/reproduce_schedule.sh speed      # BN-x5 (6x) seed 0 again in plain fp32, beside its seeds
#
# The baseline is the Figure 3 study's own runs (one command makes them for both studies, in
# $BNEXP_RUNS/inception_<data>/main; made on another machine, their committed records can be copied
# back there: see reproduce_inception.sh). `report` keeps BN-x5's records in
# results/schedule/<data>/records, which come back the same way:
#   mkdir -p ~/bnexp-runs/schedule_<data> && cp -r results/schedule/<data>/records/. ~/bnexp-runs/schedule_<data>
# Each BN-x5 run lasts the baseline's length divided by its decay speed-up
# (scripts/inception_lengths.sh): its learning rate is then spent to the baseline's final fraction
# of its start.
# Runs are named by their overrides (model, speed-up, seed), so SPEEDUPS and SEEDS split a step into
# lanes that run at once, and a step run again skips what is finished and resumes what was stopped.
# Arguments after the step go to bnexp train (e.g. trainer.threads=1).
set -euo pipefail
cd "$(dirname "$0")/.."
bnexp=${BNEXP:-$(command -v bnexp || echo .venv/bin/bnexp)}
python=${PYTHON:-$(dirname "$bnexp")/python}
data=${DATA:?DATA=mnist or DATA=fashion_mnist}
case $data in
  mnist) targets=0.95,0.98,0.99 ;;
  fashion_mnist) targets=0.85,0.88,0.9 ;;
  *) echo "reproduce_schedule: DATA must be mnist or fashion_mnist, not '$data'" >&2; exit 2 ;;
esac
sweeps=${BNEXP_RUNS:-$HOME/bnexp-runs}/schedule_$data
out=results/schedule/$data
seeds=${SEEDS:-0,1,2,3,4}
speedups=${SPEEDUPS:-6 3 2 1}
scale=(scale="inception_${data}_plateau" trainer.progress=false 'hydra.sweep.subdir=${hydra.job.override_dirname}')
figure3=${BNEXP_RUNS:-$HOME/bnexp-runs}/inception_$data  # the Figure 3 study's runs: the baseline's
. scripts/inception_lengths.sh
. scripts/records.sh

case "${1:-}" in
  baseline)
    MODELS=inception SEEDS=$seeds bash scripts/reproduce_inception.sh slow "${@:2}" ;;
  bn_x5)
    steps=$(baseline_steps)
    for s in $speedups; do
      n=$(decayed_steps "$steps" "$s")
      "$bnexp" train -m experiment=bn_x5 "${scale[@]}" name="bn_x5_decay${s}x" schedule.speedup="$s" \
        trainer.max_steps="$n" trainer.seed="$seeds" hydra.sweep.dir="$sweeps/bn_x5" "${@:2}"
    done ;;
  speed)  # the speed settings (channels_last, PointwiseConv, BN folded for evaluation) against plain fp32
    steps=$(baseline_steps)
    "$bnexp" train -m experiment=bn_x5 "${scale[@]}" name=bn_x5_decay6x schedule.speedup=6 \
      trainer.max_steps="$(decayed_steps "$steps" 6)" \
      trainer.seed=0 trainer.channels_last=false trainer.eval_fold_bn=false hydra.sweep.dir="$sweeps/speed" "${@:2}"
    mkdir -p "$out"
    "$python" scripts/same_seed.py "$sweeps/bn_x5" "$sweeps/speed" --out "$out/speed.md" ;;
  report)  # and whether each setting had stopped improving by its end (gain over its last quarter)
    steps=$(baseline_steps)
    "$bnexp" report "$figure3/main"/experiment=inception,* "$sweeps/bn_x5" --baseline inception --targets "$targets" \
      --claims "results/schedule/$data/claims.yaml" --out "$out"
    "$python" scripts/plateau.py "$figure3/main" --name inception --lengths "$steps" --out "$out/plateau_inception.md"
    for s in $speedups; do
      "$python" scripts/plateau.py "$sweeps/bn_x5" --name "bn_x5_decay${s}x" \
        --lengths "$(decayed_steps "$steps" "$s")" --out "$out/plateau_bn_x5_decay${s}x.md"
    done
    save_records "$sweeps" "$out" bn_x5 ;;
  *) echo "usage: DATA=mnist|fashion_mnist $0 baseline | bn_x5 | report | speed" >&2; exit 2 ;;
esac
