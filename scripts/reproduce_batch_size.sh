#!/usr/bin/env bash
# The small-batch study (Wu & He 2018, Figure 1 / Table 1 there; PAPER.md sec. 4) on the paper's
# MNIST MLP: batch size 2..64 x {batch, batch_renorm, group, layer, none} x 5 seeds. Every run sees
# the same number of training examples (EXAMPLES, 3.2 epochs by default); the learning rate is
# linear in the batch size (2.0 at 64, the Figure 1 choice); 8 evaluations per run, each also with
# batch statistics on test batches of the training batch size (test/error_batchstats) and on the
# training set (trainer.eval_train: the train/test gap). The 5 seeds of each setting train together
# as one replicated run (trainer.replicas=5, compiled), except Batch Renorm's, which replicas cannot
# train (its step counter is a Python number): those run one by one. SERIAL=1 runs every seed on its
# own. BATCHES picks the batch sizes (default "2 4 8 16 32 64"), to split the grid over two lanes.
#
#   OMP_NUM_THREADS=1 bash scripts/reproduce_batch_size.sh          # 150 runs
#   OMP_NUM_THREADS=1 bash scripts/reproduce_batch_size.sh report   # table, figure, runs.csv, verdicts
#   OMP_NUM_THREADS=1 bash scripts/reproduce_batch_size.sh population   # BN at 2..16 again, 3 seeds
#   OMP_NUM_THREADS=1 bash scripts/reproduce_batch_size.sh ten_seeds    # batch 4 at 10 seeds
#
# `population` asks whether BN's small-batch failure lies in its inference statistics: BN at batch
# 2..16 again, then `bnexp finalize` on each run: the paper's population statistics (Algorithm 2,
# over 6,000 training examples after training) in place of the moving averages, same weights.
#
# `ten_seeds` adds seeds 5-9 of BN, GN and Batch Renorm at batch 4, where the 5-seed verdict on
# Renorm against GN was open, and decides the claims again over all runs (results/batch_size/mnist/ten_seeds).
#
# Runs go to $BNEXP_RUNS/batch_size/main (default ~/bnexp-runs; run it again to continue a stopped
# sweep); the table and figure to results/batch_size, the report, runs.csv and verdicts (by
# results/batch_size/claims.yaml) to results/batch_size/mnist.
set -euo pipefail
cd "$(dirname "$0")/.."
bnexp=${BNEXP:-$(command -v bnexp || echo .venv/bin/bnexp)}
python=$(dirname "$bnexp")/python
runs=${BNEXP_RUNS:-$HOME/bnexp-runs}/batch_size
sweep=$runs/main
examples=${EXAMPLES:-192000}

seeds=(trainer.seed=0 trainer.replicas=5 trainer.compile=true)  # seeds 0-4 as one process
serial=0,1,2,3,4
[ "${SERIAL:-0}" = 1 ] && seeds=(trainer.seed=$serial)

common() {  # the overrides every run at batch size $1 shares, but the seeds
  local steps=$((examples / $1))
  echo experiment=fig1_mnist trainer.batch_size="$1" trainer.max_steps=$steps \
    trainer.eval_every=$((steps / 8)) trainer.eval_batchstats=true trainer.eval_train=true trainer.progress=false \
    optim.lr="$("$python" -c "print(2.0 * $1 / 64)")"
}

if [ "${1:-}" = report ]; then
  "$bnexp" report "$sweep" --variant-keys norm.name,trainer.batch_size --baseline norm=batch,trainer.batch_size=64 \
    --claims results/batch_size/claims.yaml --out results/batch_size/mnist
  "$python" scripts/batch_size_report.py "$sweep" --out results/batch_size
  exit
fi

renorm() {  # Batch Renorm at batch size $1, seeds $2, into sweep folder $3 (one run at a time)
  local steps=$((examples / $1))
  # Its rmax/dmax schedule at the same fractions of the run as its defaults' of 50,000 steps.
  # Its run folders are named by seed: all its overrides would make a name too long for the file system.
  # shellcheck disable=SC2046  # common's words are separate overrides
  "$bnexp" train -m norm=batch_renorm norm.warmup_steps=$((steps / 10)) norm.dmax_steps=$((steps / 2)) \
    norm.rmax_steps=$((steps * 4 / 5)) trainer.seed="$2" $(common "$1") hydra.sweep.dir="$3" \
    'hydra.sweep.subdir=${hydra.job.num}_seed_${trainer.seed}'
}

if [ "${1:-}" = ten_seeds ]; then  # seeds 5-9 at batch 4, beside the 5-seed sweep, not inside it
  more=$runs/ten_seeds
  seeds=(trainer.seed=5 trainer.replicas=5 trainer.compile=true)
  [ "${SERIAL:-0}" = 1 ] && seeds=(trainer.seed=5,6,7,8,9)
  # shellcheck disable=SC2046
  "$bnexp" train -m norm=batch,group "${seeds[@]}" $(common 4) hydra.sweep.dir="$more/b4"
  renorm 4 5,6,7,8,9 "$more/b4_renorm"
  "$bnexp" report "$sweep" "$more" --variant-keys norm.name,trainer.batch_size \
    --baseline norm=batch,trainer.batch_size=64 --claims results/batch_size/claims.yaml \
    --out results/batch_size/mnist/ten_seeds
  exit
fi

if [ "${1:-}" = population ]; then  # the 3-seed sweep of results/batch_size/population
  sweep=$runs/population seeds=(trainer.seed=0 trainer.replicas=3 trainer.compile=true)
  [ "${SERIAL:-0}" = 1 ] && seeds=(trainer.seed=0,1,2)
  for batch in 2 4 8 16; do
    # shellcheck disable=SC2046  # common's words are separate overrides
    "$bnexp" train -m norm=batch "${seeds[@]}" $(common $batch) hydra.sweep.dir="$sweep/b$batch"
    for run in $(find "$sweep/b$batch" -name summary.json -printf '%h\n'); do
      "$bnexp" finalize "$run" --batches $((6000 / batch))
    done
  done
  "$python" scripts/batch_size_report.py "$sweep" --out results/batch_size/population
  exit
fi

for batch in ${BATCHES:-2 4 8 16 32 64}; do
  # shellcheck disable=SC2046
  "$bnexp" train -m norm=batch,group,layer,none "${seeds[@]}" $(common $batch) hydra.sweep.dir="$sweep/b$batch"
  renorm "$batch" $serial "$sweep/b${batch}_renorm"
done
