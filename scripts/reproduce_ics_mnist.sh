#!/usr/bin/env bash
# Does BN reduce internal covariate shift? Santurkar et al.'s (2018) ICS and loss-landscape probes
# on the paper's Figure 1 MLP (MNIST, 3 x 100 sigmoid, 50,000 steps of 60), without BN, with BN and
# with "noisy" BN, 5 seeds each, at the Figure 1 learning rate (2.0) and a low one (0.05). Both
# probes every 250 steps on the step's own batch (they do not change the runs). Reports, figures,
# runs.csv with each probe's median per phase of training, and the verdicts of
# results/ics_mnist/claims.yaml into results/ics_mnist/lr_<lr>.
#
#   bash scripts/reproduce_ics_mnist.sh train [overrides]   # 30 runs; LRS="2.0" or "0.05": one lane
#   bash scripts/reproduce_ics_mnist.sh report
#   bash scripts/reproduce_ics_mnist.sh ten_seeds [overrides]  # lr 2.0's seeds 5-9, its report at 10 seeds
#   bash scripts/reproduce_ics_mnist.sh conv   # the conv-net check: Inception vs BN-Baseline (scaled,
#                                              # 1,500 steps, 2 seeds each, probes every 50 steps)
#
# Arguments go to bnexp train, e.g. trainer.threads=1 next to another job. Runs go to
# $BNEXP_RUNS/ics_mnist (default ~/bnexp-runs); run the script again to continue an interrupted sweep.
set -euo pipefail
cd "$(dirname "$0")/.."
bnexp=${BNEXP:-$(command -v bnexp || echo .venv/bin/bnexp)}
python=$(dirname "$bnexp")/python
sweeps=${BNEXP_RUNS:-$HOME/bnexp-runs}/ics_mnist
out=results/ics_mnist

if [ "${1:-}" = conv ]; then
  # the plateau preset as it was when results/ics_mnist/inception was made: lr decay every 200 steps
  "$bnexp" train -m experiment=inception,bn_baseline scale=inception_mnist_plateau schedule.decay_steps=200 \
    trainer.max_steps=1500 \
    trainer.eval_schedule=every trainer.eval_every=250 trainer.seed=0,1 probes.ics_every=50 \
    probes.landscape_every=50 trainer.progress=false hydra.sweep.dir="$sweeps/inception" "${@:2}"
  "$bnexp" report "$sweeps/inception" --baseline inception --out "$out/inception"
  "$python" scripts/ics_medians.py "$sweeps/inception" --phases 1-300,751-1500 --out "$out/inception/verdict.md"
  exit
fi

case "${1:-}" in
  train)
    for lr in ${LRS:-2.0 0.05}; do
      "$bnexp" train -m experiment=fig1_mnist norm=none,batch,noisy_batch optim.lr=$lr trainer.seed=0,1,2,3,4 \
        probes.ics_every=250 probes.landscape_every=250 trainer.progress=false hydra.sweep.dir="$sweeps/lr_$lr" "${@:2}"
    done ;;
  ten_seeds)  # lr 2.0 left three claims open at 5 seeds: seeds 5-9 beside its sweep, then all ten decided
    "$bnexp" train -m experiment=fig1_mnist norm=none,batch,noisy_batch optim.lr=2.0 trainer.seed=5,6,7,8,9 \
      probes.ics_every=250 probes.landscape_every=250 trainer.progress=false hydra.sweep.dir="$sweeps/lr_2.0_seeds_5-9" "${@:2}"
    "$bnexp" report "$sweeps/lr_2.0" "$sweeps/lr_2.0_seeds_5-9" --baseline norm=none --targets 0.97,0.98 \
      --phases 1-2500,25001-50000 --claims "$out/claims.yaml" --out "$out/lr_2.0/ten_seeds" ;;
  report)  # phases: early (steps 1-2,500) and late (25,001-50,000), as the claims file names them
    for lr in 2.0 0.05; do
      "$bnexp" report "$sweeps/lr_$lr" --baseline norm=none --targets 0.97,0.98 --phases 1-2500,25001-50000 \
        --claims "$out/claims.yaml" --out "$out/lr_$lr"
    done
    "$python" scripts/ics_medians.py "$sweeps/lr_2.0" "$sweeps/lr_0.05" --out "$out/medians.md" ;;
  *) echo "usage: $0 train [overrides] | report | ten_seeds [overrides] | conv [overrides]" >&2; exit 2 ;;
esac
