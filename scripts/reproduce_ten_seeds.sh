#!/usr/bin/env bash
# The MLP studies' open claims at 10 seeds (results/bn_<study>/<data>/ten_seeds): the settings that
# the claims 5 seeds leave open (results/README.md, "Open verdicts") read, trained as one replicated
# run of 10 seeds each (Fashion-MNIST's init study too; MNIST's dropout study, whose seeds train one
# by one), then decided by the study's own claims file, or, for bn_depth, of which only the 100-layer
# nets and the 4-layer baseline are re-run, by a copy of the four claims it can decide.
#
#   DATA=mnist|fashion_mnist bash scripts/reproduce_ten_seeds.sh train [overrides]   # e.g. trainer.threads=1
#   DATA=mnist|fashion_mnist bash scripts/reproduce_ten_seeds.sh report
#
# Sweeps go to $BNEXP_RUNS/seeds10/bn_<study>_<data>; run train again to continue after a stop.
set -euo pipefail
cd "$(dirname "$0")/.."
bnexp=${BNEXP:-$(command -v bnexp || echo .venv/bin/bnexp)}
data=${DATA:-mnist}
case $data in
  mnist) targets=0.9,0.95,0.97 ;;
  fashion_mnist) targets=0.8,0.85,0.88 ;;
  *) echo "reproduce_ten_seeds: DATA must be mnist or fashion_mnist, not '$data'" >&2; exit 2 ;;
esac
sweeps=${BNEXP_RUNS:-$HOME/bnexp-runs}/seeds10

t() {  # STUDY OVERRIDES...: one sweep of the study's experiment
  local study=$1; shift
  "$bnexp" train -m experiment="claim_$study" data="$data" trainer.progress=false \
    'hydra.sweep.subdir=${hydra.job.override_dirname}' hydra.sweep.dir="$sweeps/bn_${study}_$data" "$@"
}
report() {  # STUDY BASELINE CLAIMS
  "$bnexp" report "$sweeps/bn_$1_$data" --baseline "$2" --targets "$targets" --claims "$3" \
    --out "results/bn_$1/$data/ten_seeds"
}

case "${1:-}" in
  train)  # replicas: 10 seeds in one process; dropout's seeds one by one (their masks' random stream)
    ten=(trainer.replicas=10 "${@:2}")
    t lr norm=none,batch optim.lr=0.01,0.1,3.0 "${ten[@]}"
    t lr norm=batch optim.lr=100.0 "${ten[@]}"
    t placement model.activation=sigmoid,relu norm=batch norm.position=pre,post "${ten[@]}"
    t placement model.activation=sigmoid,relu norm=none "${ten[@]}"
    t depth model.depth=4 norm=none model.residual=false "${ten[@]}"
    t depth model.depth=100 norm=none model.residual=true "${ten[@]}"
    if [[ $data == fashion_mnist ]]; then
      t init norm=none,batch model.init_std=0.0001,0.001,0.1,1.0,10.0 "${ten[@]}"
    else
      t dropout norm=none,batch model.dropout=0.0 trainer.seed=0,1,2,3,4,5,6,7,8,9 "${@:2}"
      t dropout norm=none,batch model.dropout=0.2,0.5 model.dropout_at=every,last trainer.seed=0,1,2,3,4,5,6,7,8,9 \
        "${@:2}"
    fi
    t depth model.depth=100 norm=none model.residual=false "${ten[@]}"
    t depth model.depth=100 norm=batch model.residual=true "${ten[@]}"
    t depth model.depth=100 norm=none model.residual=true model.skipinit=true "${ten[@]}" ;;
  report)
    report lr "norm=none,optim.lr=0.1" results/bn_lr/claims.yaml
    report placement "model.activation=relu,norm=none,norm.position=-" results/bn_placement/claims.yaml
    report depth "model.depth=4,model.residual=False,model.skipinit=False,norm=none" \
      "results/bn_depth/$data/ten_seeds/claims.yaml"
    if [[ $data == fashion_mnist ]]; then
      report init "model.init_std=0.1,norm=none" results/bn_init/claims.yaml
    else
      report dropout "model.dropout=0.0,model.dropout_at=every,norm=none" results/bn_dropout/claims.yaml
    fi ;;
  *) echo "usage: DATA=mnist|fashion_mnist $0 train [overrides] | report" >&2; exit 2 ;;
esac
