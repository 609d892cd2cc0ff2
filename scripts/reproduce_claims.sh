#!/usr/bin/env bash
# The claims every tutorial repeats about BN, measured (results/bn_<study>), on MNIST (DATA=mnist,
# the default) or Fashion-MNIST (DATA=fashion_mnist), 5 seeds per setting, from the presets
# configs/experiment/claim_<study>.yaml (the recipe: configs/experiment/claims_mlp.yaml):
#
#   bash scripts/reproduce_claims.sh init       # weight std 1e-4 .. 10, with and without BN (22 settings)
#   bash scripts/reproduce_claims.sh lr         # learning rate 1e-3 .. 100, with and without BN (22)
#   bash scripts/reproduce_claims.sh dropout    # 1,000 examples: dropout 0 / 0.2 / 0.5, before or after BN (10)
#   bash scripts/reproduce_claims.sh placement  # BN before / after sigmoid and ReLU, and no BN (6)
#   bash scripts/reproduce_claims.sh depth      # 4 .. 100 layers: plain, residual, SkipInit (30)
#   bash scripts/reproduce_claims.sh cost       # training steps/s, inference images/s: no norm, BN, BN folded
#   bash scripts/reproduce_claims.sh all        # the five training studies, one after another
#   bash scripts/reproduce_claims.sh table      # the README's table of their verdicts, both datasets
#
# Each study is a sweep in $BNEXP_RUNS/bn_<study>_<data> (run it again to continue it: finished
# runs are skipped), then `bnexp report` writes results/bn_<study>/<data>: report, runs.csv and
# the verdicts of results/bn_<study>/claims.yaml (the same claims on both datasets). Arguments
# after the study go to bnexp train (e.g. trainer.threads=1 beside another job).
set -euo pipefail
cd "$(dirname "$0")/.."
bnexp=${BNEXP:-$(command -v bnexp || echo .venv/bin/bnexp)}
python=${PYTHON:-$(dirname "$bnexp")/python}
data=${DATA:-mnist}
case $data in
  mnist) targets=0.9,0.95,0.97 ;;
  fashion_mnist) targets=0.8,0.85,0.88 ;;
  *) echo "reproduce_claims: DATA must be mnist or fashion_mnist, not '$data'" >&2; exit 2 ;;
esac
study=${1:-}
sweeps=${BNEXP_RUNS:-$HOME/bnexp-runs}/bn_${study}_$data
out=results/bn_$study/$data
common=(data="$data" trainer.progress=false 'hydra.sweep.subdir=${hydra.job.override_dirname}' hydra.sweep.dir="$sweeps")
train() { "$bnexp" train -m experiment="claim_$study" "${common[@]}" "$@"; }
report() {  # $1: the baseline variant of the report's table (the claims name their own); $2: versus.png's option
  "$bnexp" report "$sweeps" --baseline "$1" --targets "$targets" --claims "results/bn_$study/claims.yaml" \
    --out "$out" ${2:+--versus "$2"}
}

case $study in
  init)
    train norm=none,batch model.init_std=0.0001,0.0003,0.001,0.003,0.01,0.03,0.1,0.3,1.0,3.0,10.0 "${@:2}"
    report "model.init_std=0.1,norm=none" model.init_std ;;  # the grid's nearest to He's sqrt(2/100)
  lr)
    train norm=none,batch optim.lr=0.001,0.003,0.01,0.03,0.1,0.3,1.0,3.0,10.0,30.0,100.0 "${@:2}"
    report "norm=none,optim.lr=0.1" optim.lr ;;
  dropout)  # seeds one by one (dropout's masks); dropout 0 once, since where it would go does not matter then
    train norm=none,batch model.dropout=0.0 trainer.seed=0,1,2,3,4 "${@:2}"
    train norm=none,batch model.dropout=0.2,0.5 model.dropout_at=every,last trainer.seed=0,1,2,3,4 "${@:2}"
    report "model.dropout=0.0,model.dropout_at=every,norm=none" model.dropout ;;
  placement)
    train model.activation=sigmoid,relu norm=batch norm.position=pre,post "${@:2}"
    train model.activation=sigmoid,relu norm=none "${@:2}"
    report "model.activation=relu,norm=none,norm.position=-" ;;
  depth)
    train model.depth=4,8,16,32,50,100 norm=none,batch model.residual=false,true "${@:2}"
    train model.depth=4,8,16,32,50,100 norm=none model.residual=true model.skipinit=true "${@:2}"
    report "model.depth=4,model.residual=False,model.skipinit=False,norm=none" model.depth ;;
  cost)
    mkdir -p results/bn_cost
    "$python" scripts/bench_bn_cost.py --threads 1 --repeats 7 | tee results/bn_cost/bench.txt ;;
  all)
    for s in init lr dropout placement depth; do bash scripts/reproduce_claims.sh "$s" "${@:2}"; done ;;
  table)  # the README's table: every study's verdicts on both datasets, one header
    for s in init lr dropout placement depth; do
      "$python" scripts/verdict_table.py --link "results/bn_$s" MNIST="results/bn_$s/mnist/verdict.csv" \
        Fashion-MNIST="results/bn_$s/fashion_mnist/verdict.csv"
    done | awk 'NR <= 2 || !/^[|] (claim [|]|---)/' ;;
  *) echo "usage: [DATA=mnist|fashion_mnist] $0 init | lr | dropout | placement | depth | cost | all | table" >&2; exit 2 ;;
esac
