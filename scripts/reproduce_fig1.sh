#!/usr/bin/env bash
# The paper's Figure 1 (MNIST, sec. 4.1): the 3 x 100 sigmoid MLP with and without BN,
# 50,000 steps of 60 examples, 10 seeds each, trained as one replicated run per net (10 seeds in
# one process, compiled); table, CSV and figure into results/fig1_mnist.
#
#   bash scripts/reproduce_fig1.sh             # 20 runs, about 10 minutes on 2 CPU cores
#   LR_SWEEP=1 bash scripts/reproduce_fig1.sh  # first the learning-rate sweep that chose optim.lr
#
# Runs go to $BNEXP_RUNS/fig1_mnist (default ~/bnexp-runs); only the report goes into results/.
set -euo pipefail
cd "$(dirname "$0")/.."
bnexp=${BNEXP:-$(command -v bnexp || echo .venv/bin/bnexp)}
sweeps=${BNEXP_RUNS:-$HOME/bnexp-runs}/fig1_mnist
stamp=$(date +%Y-%m-%d_%H-%M-%S)
out=results/fig1_mnist

if [ "${LR_SWEEP:-0}" = 1 ]; then
  "$bnexp" train -m experiment=fig1_mnist norm=none,batch optim.lr=0.05,0.1,0.2,0.5,1.0,2.0,4.0 \
    trainer.progress=false hydra.sweep.dir="$sweeps/lr_sweep_$stamp"
  "$bnexp" report "$sweeps/lr_sweep_$stamp" --baseline norm=none,optim.lr=2.0 --targets 0.97,0.98 \
    --out "$out/lr_sweep"
fi

"$bnexp" train -m experiment=fig1_mnist norm=none,batch trainer.seed=0 trainer.replicas=10 trainer.compile=true \
  trainer.progress=false hydra.sweep.dir="$sweeps/seeds_$stamp"
"$bnexp" report "$sweeps/seeds_$stamp" --baseline norm=none --targets 0.97,0.98 --claims "$out/claims.yaml" \
  --out "$out"
