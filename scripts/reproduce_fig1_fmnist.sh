#!/usr/bin/env bash
# Figure 1's protocol on Fashion-MNIST (results/fig1_fmnist): the paper's 3 x 100 sigmoid MLP with
# and without BN, 50,000 steps of 60 examples, geometric evaluation on all 10,000 test images.
#   1. the no-BN net's learning rate: a sweep 0.05-4, 3 seeds each (replicas), the highest mean
#      best accuracy chosen by scripts/best_lr.py (never typed); BN gets the same lr;
#   2. 10 seeds per net at that lr, one replicated run each (compiled);
#   3. whether the no-BN net still improves over its last quarter (scripts/plateau.py);
#   4. the report with intervals, runs.csv, and the verdicts of results/fig1_fmnist/claims.yaml.
#
#   bash scripts/reproduce_fig1_fmnist.sh            # about 40 minutes on 2 CPU cores
#   STEP=seeds LR=0.5 bash scripts/reproduce_fig1_fmnist.sh   # skip the sweep, with a known lr
#
# Runs go to $BNEXP_RUNS/fig1_fmnist (default ~/bnexp-runs); only reports go into results/.
set -euo pipefail
cd "$(dirname "$0")/.."
bnexp=${BNEXP:-$(command -v bnexp || echo .venv/bin/bnexp)}
python=${PYTHON:-$(dirname "$(command -v "$bnexp")")/python}
sweeps=${BNEXP_RUNS:-$HOME/bnexp-runs}/fig1_fmnist
stamp=${STAMP:-$(date +%Y-%m-%d_%H-%M-%S)}
out=results/fig1_fmnist
common=(experiment=fig1_fmnist trainer.progress=false trainer.compile=true)

if [ "${STEP:-all}" = all ]; then
  "$bnexp" train -m "${common[@]}" norm=none optim.lr=0.05,0.1,0.2,0.5,1.0,2.0,4.0 trainer.replicas=3 \
    hydra.sweep.dir="$sweeps/lr_sweep_$stamp"
  "$bnexp" report "$sweeps/lr_sweep_$stamp" --targets 0.85,0.88 --out "$out/lr_sweep"
  LR=$("$python" scripts/best_lr.py "$sweeps/lr_sweep_$stamp" --out "$out/lr_sweep/choice.md")
fi
: "${LR:?set LR=... with STEP=seeds}"
echo "learning rate: $LR"

"$bnexp" train -m "${common[@]}" norm=none,batch optim.lr="$LR" trainer.seed=0 trainer.replicas=10 \
  hydra.sweep.dir="$sweeps/seeds_$stamp"
"$python" scripts/plateau.py "$sweeps/seeds_$stamp"/*norm=none* --lengths 25000,37500,50000 \
  --out "$out/plateau.md"
"$bnexp" report "$sweeps/seeds_$stamp" --baseline norm=none --targets 0.85,0.88 --claims "$out/claims.yaml" \
  --out "$out"
