"""`bnexp report`: exact arithmetic on hand-made runs, and the real CLI on real runs."""

import csv
import json
import math

import pytest
from omegaconf import OmegaConf

from bnexp import report
from bnexp.runs import find_run_dirs, load_run
from bnexp.summary import first_step_reaching

from conftest import FAST


def make_run(root, name, norm, seed, accuracy: dict, status="completed", wall=10.0, data="mnist", extra=None,
             eval_time=None):
    """A run directory as bnexp writes it, with a hand-made test/accuracy curve."""
    path = root / name
    path.mkdir(parents=True)
    base = {"name": "toy", "data": {"name": data}, "norm": {"name": norm}, "trainer": {"seed": seed}}
    OmegaConf.save(OmegaConf.merge(base, extra or {}), path / "config.yaml")
    with open(path / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "tag", "value"])
        for step, acc in accuracy.items():
            w.writerow([step, "test/accuracy", acc])
    if status:
        (path / "summary.json").write_text(json.dumps({"status": status, "wall_time_s": wall, "eval_time_s": eval_time,
                                                       "diverged_at_step": 1234 if status == "diverged" else None}))
    return path


def test_first_crossing_and_never():
    history = [(0, 0.1), (1000, 0.5), (2000, 0.89), (3000, 0.9), (4000, 0.95)]
    assert first_step_reaching(history, 0.9) == 3000
    assert first_step_reaching(history, 0.96) is None


def test_table_arithmetic(tmp_path):
    # Baseline (no norm): best 0.90 and 0.92 -> target 0.91, reached at 6000 by seed 1 only.
    make_run(tmp_path, "a0", "none", 0, {0: 0.1, 3000: 0.85, 6000: 0.90})
    make_run(tmp_path, "a1", "none", 1, {0: 0.1, 3000: 0.88, 6000: 0.92})
    # BN: reaches 0.91 at 1000 and 2000 -> mean 1500, speed-up 6000 / 1500 = 4.
    make_run(tmp_path, "b0", "batch", 0, {0: 0.1, 1000: 0.95, 2000: 0.96}, wall=20, eval_time=5)
    make_run(tmp_path, "b1", "batch", 1, {0: 0.1, 1000: 0.90, 2000: 0.97}, wall=30, eval_time=15)
    variants = report.group_variants([load_run(p) for p in find_run_dirs([tmp_path])])
    assert list(variants) == ["norm=batch", "norm=none"]
    rows = {r["variant"]: r for r in report.summarize(variants, "norm=none", None, [0.95])}
    assert rows["norm=none"]["target"] == pytest.approx(0.91)
    assert rows["norm=none"]["steps_to_target"] == (6000, 0)
    assert rows["norm=none"]["reached_target"] == 1
    assert rows["norm=batch"]["steps_to_target"][0] == 1500
    # The baseline's seed 0 never reaches 0.91: counted at its last step (6000) it gives the lower
    # bound 6000 / 1500 = 4; as never, no upper bound.
    speedup = rows["norm=batch"]["speedup"]
    assert (speedup.low, speedup.high) == (4.0, math.inf) and not speedup.exact
    assert rows["norm=batch"]["at"]["target"]["p_sooner"].value == 1.0  # 1000, 2000 against 6000, never
    assert rows["norm=batch"]["at"]["every_seed"]["reached"] == 2  # 0.90 (the lowest best): both seeds there
    assert rows["norm=none"]["targets"] == {"target": pytest.approx(0.91), "every_seed": 0.90}
    assert rows["norm=batch"]["best_accuracy"][0] == pytest.approx(0.965)
    assert rows["norm=batch"]["best_accuracy"][1] == pytest.approx(0.00707, abs=1e-5)  # sample std
    assert rows["norm=batch"]["final_accuracy"][0] == pytest.approx(0.965)
    assert rows["norm=batch"]["steps_to"][0.95] == (1500, pytest.approx(707.1, abs=0.1))
    assert rows["norm=none"]["steps_to"][0.95] is None
    assert rows["norm=batch"]["wall_time_s"][0] == 25
    assert rows["norm=batch"]["eval_share"][0] == pytest.approx((5 / 20 + 15 / 30) / 2)  # per run, then mean
    assert rows["norm=none"]["eval_share"] is None  # summaries without eval_time_s
    table = report.markdown_table(list(rows.values()), [0.95])
    assert "| 25 s (38%) |" in table
    assert "| norm=none (baseline) | 2 | 6,000 (1/2 runs) | 1.0x |" in table
    assert "| norm=batch | 2 | 1,500 ± 707 | ≥ 4.00x |" in table
    intervals = report.interval_table(list(rows.values()))
    # t(1) is 12.7: two seeds say little; an accuracy's interval stops at 100%.
    assert "| norm=batch | 2 (rough) | 96.50 [90.15, 100.00] |" in intervals
    assert "| 1/2 | never [6,000, never] | 1.0x | - |" in intervals  # the baseline at target A
    assert "| never |" in table


def test_explicit_target_and_failures_are_counted(tmp_path):
    make_run(tmp_path, "a0", "none", 0, {0: 0.1, 500: 0.6}, status="diverged")
    make_run(tmp_path, "a1", "none", 1, {0: 0.1, 500: 0.7}, status=None)  # still running, or killed
    variants = report.group_variants([load_run(p) for p in find_run_dirs([tmp_path])])
    [row] = report.summarize(variants, "toy", 0.65, [])
    assert (row["diverged"], row["unfinished"], row["completed"]) == (1, 1, 0)
    assert row["diverged_at"] == [1234]
    assert row["steps_to_target"] == (500, 0) and row["reached_target"] == 1


def test_cli_reports_damaged_runs_and_writes_files(bnexp, tmp_path):
    make_run(tmp_path / "runs", "a0", "none", 0, {0: 0.1, 100: 0.8})
    make_run(tmp_path / "runs", "b0", "batch", 0, {0: 0.1, 100: 0.9})
    broken = make_run(tmp_path / "runs", "c0", "batch", 1, {0: 0.1})
    (broken / "metrics.csv").write_text("step,tag,value\nnot-a-number,test/accuracy,x\n")
    done = bnexp("report", str(tmp_path / "runs"), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert f"left out {broken}: damaged metrics.csv" in done.stderr
    assert "| norm=batch | 1 | 100 |" in done.stdout
    for name in ("report.md", "report.csv", "curves.csv", "accuracy.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0


def test_cli_on_a_path_without_runs(bnexp, tmp_path):
    (tmp_path / "empty").mkdir()
    done = bnexp("report", str(tmp_path / "empty"))
    assert done.returncode == 2
    assert "no readable runs under" in done.stderr
    assert bnexp("report", str(tmp_path / "nowhere")).returncode == 2


def test_report_on_a_real_sweep(bnexp, runs_root, tmp_path):
    assert bnexp("train", "-m", "norm=none,batch", "trainer.seed=0,1", *FAST).returncode == 0
    done = bnexp("report", str(runs_root), "--targets", "0.5", "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "4 runs in 2 variants" in done.stdout
    assert "norm=none (baseline) | 2 |" in done.stdout and "norm=batch | 2 |" in done.stdout
    for name in ("accuracy.png", "figure.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mixed_configs_and_damaged_event_files_are_said(bnexp, tmp_path):
    make_run(tmp_path, "a0", "none", 0, {0: 0.1, 100: 0.8})
    make_run(tmp_path, "b0", "none", 0, {0: 0.1, 100: 0.9}, data="synthetic")
    damaged = make_run(tmp_path, "c0", "none", 1, {})
    (damaged / "metrics.csv").unlink()
    (damaged / "events.out.tfevents.1.host").write_bytes(b"\x00garbage, not a record")
    done = bnexp("report", str(tmp_path), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "the runs differ in data.name (mnist, synthetic)" in done.stdout
    assert "| data=mnist (baseline) | 1 |" in done.stdout and "| data=synthetic | 1 |" in done.stdout
    assert f"left out {damaged}" in done.stderr
    assert f"- {damaged}:" in (tmp_path / "out" / "report.md").read_text()  # in the written report too


def test_options_only_some_runs_have(tmp_path):
    make_run(tmp_path, "a0", "none", 0, {0: 0.1, 100: 0.8})
    make_run(tmp_path, "b0", "batch", 0, {0: 0.1, 100: 0.9}, extra={"norm": {"eps": 1e-5}})
    make_run(tmp_path, "c0", "batch", 0, {0: 0.1, 100: 0.9}, extra={"norm": {"eps": 1e-3}, "trainer": {"amp": False}})
    make_run(tmp_path, "c1", "batch", 1, {0: 0.1, 100: 0.9}, extra={"norm": {"eps": 1e-3}})
    runs = [load_run(p) for p in find_run_dirs([tmp_path])]
    # norm.eps is absent where norm=none but still tells the two BN variants apart; trainer.amp,
    # known to one run only (a newer bnexp), splits nothing.
    variants = report.group_variants(runs)
    assert {name: len(r) for name, r in variants.items()} == {
        "norm.eps=0.001,norm=batch": 2, "norm.eps=1e-05,norm=batch": 1, "norm.eps=-,norm=none": 1}
    assert report.silent_keys(runs) == {"trainer.amp"}


def test_seeds_run_with_different_execution_settings_form_one_variant(bnexp, runs_root):
    """trainer.threads (and the other execution settings) change how a run executes, not what it computes."""
    for seed, threads, eval_batch in ((0, 1, 100), (1, 2, 512)):
        done = bnexp("train", *FAST, f"trainer.seed={seed}", f"trainer.threads={threads}",
                     f"trainer.eval_batch_size={eval_batch}")
        assert done.returncode == 0, done.stderr
    done = bnexp("report", str(runs_root))
    assert done.returncode == 0, done.stderr
    assert "2 runs in 1 variants" in done.stdout and "| mlp (baseline) | 2 |" in done.stdout


def versus_runs(root):
    """Two norms over three weight scales, two seeds each; BN's first seed diverges at std 1."""
    for norm in ("none", "batch"):
        for std, acc in ((0.01, 0.5), (0.1, 0.9), (1.0, 0.7)):
            for seed in (0, 1):
                diverged = norm == "batch" and std == 1.0 and seed == 0
                make_run(root, f"{norm}_{std}_{seed}", norm, seed, {0: 0.1, 100: acc + 0.02 * seed},
                         status="diverged" if diverged else "completed", extra={"model": {"init_std": std}})
    return root


def test_versus_points_are_one_line_per_other_setting(tmp_path):
    variants = report.group_variants([load_run(p) for p in find_run_dirs([versus_runs(tmp_path)])])
    lines = report.versus_points(variants, "model.init_std")
    assert set(lines) == {"norm=batch", "norm=none"}
    batch = lines["norm=batch"]
    assert [p[0] for p in batch] == [0.01, 0.1, 1.0]
    assert [p[1].value for p in batch] == pytest.approx([0.51, 0.91, 0.71])  # mean best over the 2 seeds
    assert [p[1].n for p in batch] == [2, 2, 2]
    assert [p[2] for p in batch] == [None, None, None]  # no gradient probe in these runs
    assert [p[3] for p in batch] == [0, 0, 0.5] and [p[3] for p in lines["norm=none"]] == [0, 0, 0]


def test_versus_takes_the_init_gradient_ratio_where_runs_probed_it(tmp_path):
    path = make_run(tmp_path, "a", "batch", 0, {0: 0.1, 100: 0.9}, extra={"model": {"init_std": 0.1}})
    make_run(tmp_path, "b", "batch", 0, {0: 0.1, 100: 0.8}, extra={"model": {"init_std": 1.0}})
    with open(path / "metrics.csv", "a") as f:  # hidden1 sorts before hidden2 and output
        f.write("1,grad/hidden2/norm,5.0\n1,grad/hidden1/norm,1000.0\n1,grad/output/norm,10.0\n")
    variants = report.group_variants([load_run(p) for p in find_run_dirs([tmp_path])])
    [line] = report.versus_points(variants, "model.init_std").values()
    assert line[0][2].value == pytest.approx(2.0)  # log10(1000 / 10)
    assert line[1][2] is None


def test_cli_versus_draws_and_refuses_what_it_cannot_draw(bnexp, tmp_path):
    runs = versus_runs(tmp_path / "runs")
    done = bnexp("report", str(runs), "--versus", "model.init_std", "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "versus.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = tmp_path / "bad"
    for key, says in (("model.nope", "no run has that option"),
                      ("norm.name", "it takes an option every run sets to one number")):
        done = bnexp("report", str(runs), "--versus", key, "--out", str(out))
        assert done.returncode == 2
        assert done.stderr.strip().splitlines() == [done.stderr.strip()] and says in done.stderr, done.stderr
        assert not out.exists()  # refused before anything is written
    done = bnexp("report", str(runs), "--versus", "model.init_std")
    assert done.returncode == 2 and "add --out DIR" in done.stderr


def test_variant_keys_name_variants_whose_other_options_follow_from_them(bnexp, tmp_path):
    """--variant-keys norm.name,trainer.batch_size: a batch size's own steps and lr do not name the
    variant; keys that cannot tell two variants apart are refused, naming what else differs."""
    for norm in ("batch", "group"):
        for batch, lr in ((2, 0.0625), (64, 2.0)):
            for seed in (0, 1):
                extra = {"trainer": {"batch_size": batch, "max_steps": 128 // batch}, "optim": {"lr": lr}}
                make_run(tmp_path / "runs", f"{norm}{batch}_{seed}", norm, seed, {0: 0.1, 10: 0.9}, extra=extra)
    runs = [load_run(p) for p in find_run_dirs([tmp_path / "runs"])]
    assert list(report.group_variants(runs, ["norm.name", "trainer.batch_size"])) == [
        "norm=batch,trainer.batch_size=2", "norm=batch,trainer.batch_size=64",
        "norm=group,trainer.batch_size=2", "norm=group,trainer.batch_size=64"]
    assert all(len(v) == 2 for v in report.group_variants(runs, ["norm.name", "trainer.batch_size"]).values())
    done = bnexp("report", str(tmp_path / "runs"), "--variant-keys", "norm.name",
                 "--baseline", "norm=batch")
    assert done.returncode == 2
    assert "variant norm=batch holds runs that also differ in optim.lr, trainer.batch_size, trainer.max_steps" \
        in done.stderr
    done = bnexp("report", str(tmp_path / "runs"), "--variant-keys", "norm.name,trainer.batchsize")
    assert done.returncode == 2 and "no run has trainer.batchsize" in done.stderr


def test_panels_past_the_alphabet_are_numbered():
    from bnexp.figures import panel_labels

    assert panel_labels(3) == ["a", "b", "c"]
    assert panel_labels(26)[-1] == "z"
    many = panel_labels(31)  # a 30-variant sweep's figure: letters would run into punctuation
    assert many[0] == "1" and many[-1] == "31" and all(label.isdigit() for label in many)
