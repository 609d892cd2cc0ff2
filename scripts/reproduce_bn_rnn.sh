#!/usr/bin/env bash
# BN in recurrent networks (results/bn_rnn): an LSTM reading MNIST (DATA=mnist, the default) or
# Fashion-MNIST (DATA=fashion_mnist) row by row, with no norm, Cooijmans et al.'s BN (per-step and
# shared statistics, gain 0.1 and 1, input term only) and Ba et al.'s LN: configs/experiment/lstm.yaml
# and the presets beside it, 5 seeds each (SEEDS to change them).
#
#   bash scripts/reproduce_bn_rnn.sh lr_sweep  # 1) the LSTM's Adam lr: 6 values x 2 seeds, 1,000 steps
#   bash scripts/reproduce_bn_rnn.sh main      # 2) the six presets at that lr, 3,000 steps
#   bash scripts/reproduce_bn_rnn.sh small     # 3) BN- and LN-LSTM at batch 4 and 64, 48,000 examples each
#   bash scripts/reproduce_bn_rnn.sh report    # 4) reports, runs.csv and verdicts of both claims files
#   bash scripts/reproduce_bn_rnn.sh gradient_flow  # the one-batch gradient-flow measurement (no training)
#   bash scripts/reproduce_bn_rnn.sh records   # the finished runs' records into results/bn_rnn/<data>/records
#
# `records` keeps what a report reads of every finished run (config, summary, metrics), so that
# another machine can go on: mkdir -p ~/bnexp-runs/bn_rnn_<data> && cp -r results/bn_rnn/<data>/records/. ~/bnexp-runs/bn_rnn_<data>
# brings them back; the steps then skip them and train the rest.
# The lr is chosen by code (scripts/best_lr.py: the highest mean best accuracy) and written to
# results/bn_rnn/<data>/lr_sweep/choice.md; `main` and `small` read it from the sweep, or LR=... .
# At batch 4 Adam's lr is a quarter of it (the square-root rule: 4 = sqrt(64 / 4)).
# Runs go to $BNEXP_RUNS/bn_rnn_<data>/<step> (default ~/bnexp-runs); run a step again to continue
# it (finished runs are skipped, stopped ones resume). MODELS and SEEDS split `main` into lanes, e.g.
#   MODELS=lstm,bn_lstm,bn_lstm_gain1 bash ... main trainer.threads=1 &
#   MODELS=bn_lstm_shared,bn_lstm_input,ln_lstm bash ... main trainer.threads=1 &
# Arguments after the step go to bnexp train.
set -euo pipefail
cd "$(dirname "$0")/.."
bnexp=${BNEXP:-$(command -v bnexp || echo .venv/bin/bnexp)}
python=${PYTHON:-$(dirname "$bnexp")/python}
data=${DATA:-mnist}
case $data in
  mnist) targets=0.97,0.98,0.985 ;;
  fashion_mnist) targets=0.85,0.87,0.88 ;;
  *) echo "reproduce_bn_rnn: DATA must be mnist or fashion_mnist, not '$data'" >&2; exit 2 ;;
esac
out=results/bn_rnn/$data
sweeps=${BNEXP_RUNS:-$HOME/bnexp-runs}/bn_rnn_$data
seeds=${SEEDS:-0,1,2,3,4}
common=(data="$data" trainer.progress=false 'hydra.sweep.subdir=${hydra.job.override_dirname}')

lr() {  # the LSTM's lr: LR, or the sweep's choice
  if [ -n "${LR:-}" ]; then echo "$LR"; return; fi
  [ -d "$sweeps/lr_sweep" ] || { echo "reproduce_bn_rnn: no lr sweep in $sweeps/lr_sweep: run lr_sweep first, or set LR" >&2; exit 2; }
  "$python" scripts/best_lr.py "$sweeps/lr_sweep"
}

case "${1:-}" in
  lr_sweep)
    "$bnexp" train -m experiment=lstm "${common[@]}" optim.lr=0.0005,0.001,0.002,0.005,0.01,0.02 trainer.seed=0,1 \
      trainer.max_steps=1000 hydra.sweep.dir="$sweeps/lr_sweep" "${@:2}"
    "$bnexp" report "$sweeps/lr_sweep" --targets "${targets%,*}" --out "$out/lr_sweep"
    "$python" scripts/best_lr.py "$sweeps/lr_sweep" --out "$out/lr_sweep/choice.md" ;;
  main)
    "$bnexp" train -m experiment="${MODELS:-lstm,bn_lstm,bn_lstm_gain1,bn_lstm_shared,bn_lstm_input,ln_lstm}" \
      "${common[@]}" optim.lr="$(lr)" trainer.seed="$seeds" hydra.sweep.dir="$sweeps/main" "${@:2}" ;;
  small)  # 48,000 examples: 750 steps of 64, 12,000 of 4 (Adam's lr / 4); 6 evaluations, of the test and
    # the training set (the claims read the final ones), no variable-length test
    rate=$(lr)
    small=(experiment="${MODELS:-bn_lstm,ln_lstm}" "${common[@]}" trainer.eval_train=true trainer.seed="$seeds"
           trainer.eval_schedule=every 'probes.longer_rows=[]' hydra.sweep.dir="$sweeps/small")
    "$bnexp" train -m "${small[@]}" trainer.batch_size=64 trainer.max_steps=750 trainer.eval_every=125 \
      optim.lr="$rate" "${@:2}"
    "$bnexp" train -m "${small[@]}" trainer.batch_size=4 trainer.max_steps=12000 trainer.eval_every=2000 \
      optim.lr="$("$python" -c "print($rate / 4)")" "${@:2}" ;;
  report)
    "$bnexp" report "$sweeps/main" --baseline lstm --targets "$targets" --claims "$out/claims.yaml" --out "$out"
    "$python" scripts/bn_rnn_lengths.py "$out/runs.csv" --out "$out/lengths.png"  # accuracy against test length
    "$bnexp" report "$sweeps/small" --variant-keys name,trainer.batch_size \
      --baseline name=bn_lstm,trainer.batch_size=64 --claims results/bn_rnn/small_batch/claims.yaml \
      --out "results/bn_rnn/small_batch/$data" ;;
  records) . scripts/records.sh; save_records "$sweeps" "$out" lr_sweep main small ;;
  gradient_flow)  # 10 seeds, with noise in h_0 (the claims' setting) and without (3 seeds)
    "$python" scripts/bn_rnn_gradient_flow.py --data "$data" --seeds 10 \
      --out "results/bn_rnn/gradient_flow/${data}_h0_noise" model.h0_noise=0.1
    "$python" scripts/bn_rnn_gradient_flow.py --data "$data" --seeds 3 --out "results/bn_rnn/gradient_flow/$data" ;;
  *) echo "usage: [DATA=mnist|fashion_mnist] $0 lr_sweep | main | small | report | records | gradient_flow [overrides]" >&2
     exit 2 ;;
esac
