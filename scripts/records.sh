# Sourced by the reproduce_*.sh scripts of the studies (inception, schedule, bn_rnn, bn_shift): the one definition of a study's
# committed records.

# save_records SWEEPS OUT SWEEP...: each finished run's config, summary, metrics and bnexp evaluate's
# tables (all a report reads, no checkpoints) under OUT/records, laid out as the runs are under SWEEPS (a replicated job's
# seeds in its seed_<s> dirs). Copied back into SWEEPS on another machine (cp -r OUT/records/. SWEEPS),
# the steps skip them as finished and the reports read them as if made there. A run that has not
# finished (completed or diverged) is left out: it can only go on from its checkpoints.
save_records() {
  local sweeps=$1 out=$2 sweep run record
  rm -rf "$out/records"
  for sweep in "${@:3}"; do
    [ -d "$sweeps/$sweep" ] || continue  # a step not begun
    # Every run writes a config.yaml (Hydra's own copy lives in .hydra/).
    find "$sweeps/$sweep" -name config.yaml -not -path '*/.hydra/*' | sort | while read -r run; do
      run=$(dirname "$run")
      grep -qsE '"status": "(completed|diverged)"' "$run/summary.json" || continue
      record=$out/records/${run#"$sweeps"/}
      mkdir -p "$record"
      cp "$run"/{config.yaml,summary.json,metrics.csv} "$record"
      for table in "$run"/evaluate/step_*[0-9]/evaluation.csv; do  # bnexp evaluate's, which reports read too
        [ -f "$table" ] || continue  # (step_<n>.tmp: an evaluation stopped before it was whole)
        local at=$record/$(dirname "${table#"$run"/}")
        mkdir -p "$at" && cp "$table" "${table%.csv}.json" "$at"
      done
    done
  done
}
