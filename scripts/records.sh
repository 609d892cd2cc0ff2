# Sourced by reproduce_inception.sh and reproduce_schedule.sh: the one definition of a study's
# committed records.

# save_records SWEEPS OUT SWEEP...: each run's config, summary and metrics (all a report reads, no
# checkpoints) under OUT/records, laid out as the runs are under SWEEPS (a replicated job's seeds in
# its seed_<s> dirs). Copied back into SWEEPS on another machine (cp -r OUT/records/. SWEEPS), the
# steps skip them as finished and the reports read them as if made there.
save_records() {
  local sweeps=$1 out=$2 sweep run record
  rm -rf "$out/records"
  for sweep in "${@:3}"; do
    # Every run writes a config.yaml (Hydra's own copy lives in .hydra/).
    find "$sweeps/$sweep" -name config.yaml -not -path '*/.hydra/*' | sort | while read -r run; do
      run=$(dirname "$run")
      record=$out/records/${run#"$sweeps"/}
      mkdir -p "$record"
      cp "$run"/{config.yaml,summary.json,metrics.csv} "$record"
    done
  done
}
