# Sourced by reproduce_inception.sh and reproduce_schedule.sh: the one definition of their runs'
# lengths. Needs $bnexp and $data.

# The Inception baseline's length N: trainer.max_steps of scale=inception_<data>_plateau (8,000 steps
# on MNIST, 24,000 on Fashion-MNIST), read through Hydra from the one place it is set.
baseline_steps() {
  local n
  n=$("$bnexp" train experiment=inception scale="inception_${data}_plateau" --cfg job --resolve 2>/dev/null |
    sed -n 's/^  max_steps: \([0-9]*\)$/\1/p' || true)
  [[ -n $n ]] || { echo "$(basename "$0"): no trainer.max_steps in scale=inception_${data}_plateau" >&2; return 2; }
  echo "$n"
}

# decayed_steps N S: the length of a run whose lr decays S times faster than the baseline's: N/S
# steps, so its lr is spent to the baseline's final fraction of its start, but at least 1,500
# (MNIST's BN-x5 at the paper's 6x: 1,500 steps, its lr 0.3% of its start by the end).
decayed_steps() {
  echo $(( $1 / $2 > 1500 ? $1 / $2 : 1500 ))
}
