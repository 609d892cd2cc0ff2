"""`bnexp evaluate RUN_DIR`: a trained run's test accuracy on the clean and the shifted test sets
(data.shift's corruptions), with each way of getting BN's statistics, on the same weights.

  running  the moving averages the run ended with: the evaluation of training;
  precise  population statistics recomputed over N training images with the weights fixed
           (PreciseBN, Wu & Johnson 2021): the paper's Algorithm 2 over N/batch_size batches;
  target   statistics re-estimated on n unlabeled images of the evaluated set (AdaBN, Li et al.
           2016), with the moving averages as a prior worth N images: N/(N+n) of theirs and
           n/(N+n) of the images' (Schneider et al. 2020); N=0 is the images' statistics alone;
  batch    every test batch normalized with its own statistics (prediction-time BN), in batches
           of a given size, shuffled, or each of one class (the classic bug of a sorted test set).

Modes other than running need BN's batch statistics, and are refused for models without them.
The n adaptation images come from the evaluated set itself (transductively, as in AdaBN and
Schneider et al.), the same ones for every run with the same --seed. Evaluation is in float32.
It reads the newest checkpoint (or --step's: one, several, or all the run kept, for the gap over
training with trainer.keep_checkpoint_every) and writes, per step, RUN_DIR/evaluate/step_<step>/:
evaluation.csv (a row per set and mode with its seconds, and each mode's mean over every
corruption family and over all corruptions, "shifted"), evaluation.json (the rows, and the
seconds the precise statistics took, computed once for all sets) and TensorBoard scalars
(evaluate/<set>/<label>/accuracy); the run's own files are left as they were. `bnexp report`
reads the newest step's accuracies into runs.csv as evaluate/<set>/<label> columns, the columns
a claims file's probe measures name.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from bnexp.config import load_run_config
from bnexp.errors import UserError

MODES = ("running", "precise", "target", "batch")
ORDERS = ("shuffled", "by_class")
SHIFTED = ("mnist", "fashion_mnist")  # the datasets data.shift's corruptions are defined for
COLUMNS = ("set", "severity", "mode", "label", "adapt_images", "prior", "batch_size", "batch_order",
           "accuracy", "error", "loss", "examples", "sets", "seconds", "checkpoint_step")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bnexp evaluate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--sets", default="all",
                        help="clean and corruption names, comma-separated; all: clean and every corruption "
                             "(the default; clean alone for datasets without corruptions)")
    parser.add_argument("--severity", type=int, default=None, help="the corruptions' severity (default: each one's)")
    parser.add_argument("--modes", default=None,
                        help=f"comma-separated, of {', '.join(MODES)} (default: all the model has)")
    parser.add_argument("--precise-images", type=int, default=10_000,
                        help="training images the precise statistics average over (default 10000)")
    parser.add_argument("--adapt-images", default="512", help="n: test images target statistics use; a list sweeps")
    parser.add_argument("--prior", default="0", help="N: the source statistics' weight in images; a list sweeps")
    parser.add_argument("--batch-size", type=int, default=None, help="batch mode's batch (default: the run's)")
    parser.add_argument("--batch-order", default="shuffled", help=f"batch mode's batches, of {', '.join(ORDERS)}")
    parser.add_argument("--step", default=None,
                        help="the checkpoint's step, comma-separated steps, or all: every checkpoint the run "
                             "kept (trainer.keep_checkpoint_every) (default: the newest)")
    parser.add_argument("--seed", type=int, default=0, help="which test images adapt, and batch mode's shuffle")
    args = parser.parse_args(argv)
    try:
        settings = dict(sets=words(args.sets), modes=words(args.modes) if args.modes else None,
                        severity=args.severity, precise_images=args.precise_images,
                        adapt_images=numbers(args.adapt_images, "--adapt-images", 1),
                        priors=numbers(args.prior, "--prior", 0), batch_size=args.batch_size,
                        batch_orders=words(args.batch_order), seed=args.seed)
        for step in asked_steps(args.run_dir, args.step):
            rows, out = evaluate(args.run_dir, step=step, **settings)
            for row in rows:
                detail = {"target": f"n={row['adapt_images']} N={row['prior']}",
                          "batch": f"{row['batch_order']} batches of {row['batch_size']}"}.get(row["mode"], "")
                print(f"{row['set']:>16} {row['mode']:>8} {detail:<28} test error {100 * row['error']:6.2f}%")
            print(f"wrote {out / 'evaluation.csv'}")
    except UserError as e:
        print(e, file=sys.stderr)
        return 2
    return 0


def words(text: str) -> list[str]:
    return [w.strip() for w in text.split(",") if w.strip()]


def numbers(text: str, flag: str, least: int) -> list[int]:
    try:
        values = [int(w) for w in words(text)]
    except ValueError:
        raise UserError(f"{flag} takes whole numbers, comma-separated; got {text!r}") from None
    if not values or min(values) < least:
        raise UserError(f"{flag} takes whole numbers >= {least}; got {text!r}")
    return values


def asked_steps(run_dir: Path, text: str | None) -> list[int | None]:
    """--step as the checkpoint steps to evaluate, oldest first (None: the newest)."""
    if text is None:
        return [None]
    if text.strip() == "all":
        return checkpoint_steps(run_dir) or [None]  # none: evaluate says why (no run, no checkpoint)
    return sorted(set(numbers(text, "--step", 0)))


def evaluate(run_dir: Path, sets: list[str], modes: list[str] | None = None, severity: int | None = None,
             precise_images: int = 10_000, adapt_images: list[int] = (512,), priors: list[int] = (0,),
             batch_size: int | None = None, batch_orders: list[str] = ("shuffled",), step: int | None = None,
             seed: int = 0) -> tuple[list[dict], Path]:
    """Every (set, mode) row of one run's checkpoint, written to RUN_DIR/evaluate/step_<step>/."""
    import torch

    from bnexp import checkpoint, models, rundir
    from bnexp import data as datasets
    from bnexp.builders import pick_device
    from bnexp.evaluation import restore_buffers, saved_buffers
    from bnexp.norm import batch_statistics_layers, finalize_population

    if not (run_dir / "config.yaml").exists() and any(run_dir.glob("seed_*/config.yaml")):
        raise UserError(f"{run_dir} is a replicated run: evaluate each of its seed_<s> dirs")
    cfg = load_run_config(run_dir)
    if cfg.data.name == "imagefolder":
        raise UserError("bnexp evaluate reads the test sets kept as tensors (mnist, fashion_mnist, cifar10, "
                        "synthetic); for an imagefolder run, bnexp finalize compares its statistics")
    sets = asked_sets(sets, cfg.data.name, severity)
    batch_size = cfg.trainer.batch_size if batch_size is None else batch_size
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    if unknown := [o for o in batch_orders if o not in ORDERS]:
        raise UserError(f"unknown --batch-order {', '.join(unknown)}: choose of {', '.join(ORDERS)}")
    with rundir.owned(run_dir):  # not while a run trains into it
        state = checkpoint.load_latest(run_dir, at_most=step, required=("model",))
        if state is None or (step is not None and state["step"] != step):
            which = f"checkpoint of step {step}" if step is not None else "checkpoint"
            found = ", ".join(map(str, checkpoint_steps(run_dir))) or "none"
            raise UserError(f"{run_dir} has no {which} to evaluate (steps found: {found})")
        device = pick_device(cfg.trainer.device)
        data = datasets.build(with_shift(cfg.data, None, None), cfg.trainer, device)  # the clean test set
        model = models.build(cfg.model, cfg.norm, data.input_shape, data.num_classes).to(device)
        model.load_state_dict(state["model"])
        modes = usable_modes(model, cfg.norm.name, modes)
        layers = batch_statistics_layers(model)
        source = saved_buffers(layers)
        stats, precise_seconds = {"running": source}, None
        if "precise" in modes:
            if precise_images < cfg.trainer.batch_size:
                raise UserError(f"--precise-images={precise_images} is less than one training batch "
                                f"({cfg.trainer.batch_size})")
            started = time.perf_counter()
            batches = precise_images // cfg.trainer.batch_size
            finalize_population(model, (data.next_batch(state["step"] + i)[0] for i in range(batches)))
            stats["precise"] = saved_buffers(layers)
            precise_seconds = round(time.perf_counter() - started, 3)
            restore_buffers(layers, source)
        rows = []
        with torch.no_grad():
            for name, level in sets:
                x, y = (data.test_x, data.test_y) if name == "clean" else shifted(cfg, name, level, device)
                base = {"set": name, "severity": level, "checkpoint_step": state["step"]}
                for mode in modes:
                    for extra, run in variants(mode, model, layers, stats, x, y, adapt_images, priors,
                                               batch_size, batch_orders, seed, cfg.trainer.eval_batch_size):
                        started = time.perf_counter()
                        accuracy, loss, n = run()
                        seconds = time.perf_counter() - started
                        if n == 0:  # batch mode with batches larger than the set (or than every class)
                            raise UserError(f"--batch-size={batch_size} leaves no whole {extra['batch_order']} "
                                            f"batch of the {len(y)} test images")
                        row = {**base, "mode": mode, **extra, "accuracy": accuracy, "error": 1 - accuracy,
                               "loss": loss, "examples": n, "sets": 1, "seconds": round(seconds, 3)}
                        rows.append({**row, "label": label(row)})
                        restore_buffers(layers, source)
        rows += family_means(rows)
        out = run_dir / "evaluate" / f"step_{state['step']}"
        write(out, rows, {"run_dir": str(run_dir), "checkpoint_step": state["step"], "seed": seed,
                          "precise_images": precise_images if "precise" in modes else None,
                          "precise_statistics_seconds": precise_seconds})
    return rows, out


def asked_sets(names: list[str], dataset: str, severity: int | None) -> list[tuple[str, int | None]]:
    """(name, severity) of each set asked for: clean, and data.shift's corruptions by name."""
    from bnexp import shift

    if not names:
        raise UserError("--sets names no test set")
    for name in names:
        if name not in ("all", "clean"):
            shift.lookup(name)  # an unknown name refused with the list
    if dataset not in SHIFTED:
        if set(names) - {"all", "clean"}:
            raise UserError(f"data.shift's corruptions are defined for {' and '.join(SHIFTED)}, "
                            f"not for data={dataset}: evaluate --sets clean")
        names = ["clean"]
    if "all" in names:
        names = ["clean", *shift.CORRUPTIONS]
    return [(name, None if name == "clean" else shift.severity_of(name, severity)) for name in dict.fromkeys(names)]


def shifted(cfg, name: str, severity: int | None, device):
    """The run's test set under one corruption, built by data.build as a run with data.shift would."""
    from bnexp import data as datasets

    data = datasets.build(with_shift(cfg.data, name, severity), cfg.trainer, device)
    return data.test_x, data.test_y


def family_means(rows: list[dict]) -> list[dict]:
    """A row per corruption family (shift.Corruption.family: noise, blur, ...) and one for all the
    corruptions ("shifted") where every member was evaluated: each mode's mean over the sets."""
    from bnexp import shift

    groups = {"shifted": list(shift.CORRUPTIONS)}
    for name, corruption in shift.CORRUPTIONS.items():
        groups.setdefault(corruption.family, []).append(name)
    means = []
    for group, members in groups.items():
        for key in dict.fromkeys(r["label"] for r in rows):
            chosen = [r for r in rows if r["label"] == key and r["set"] in members]
            if len(chosen) < len(members):
                continue
            accuracy = sum(r["accuracy"] for r in chosen) / len(chosen)
            means.append({**chosen[0], "set": group, "severity": None, "accuracy": accuracy, "error": 1 - accuracy,
                          "loss": sum(r["loss"] for r in chosen) / len(chosen),
                          "examples": sum(r["examples"] for r in chosen), "sets": len(chosen),
                          "seconds": round(sum(r["seconds"] for r in chosen), 3)})
    return means


def with_shift(data_cfg, name: str | None, severity: int | None):
    """The run's data settings with another test set (a run from before data.shift lacks the keys)."""
    return OmegaConf.merge(data_cfg, {"shift": name, "shift_severity": severity})


def usable_modes(model, norm: str, asked: list[str] | None) -> list[str]:
    """The modes asked for (default: every one the model has), refused where the model lacks what
    they re-estimate."""
    from bnexp.norm import batch_statistics_layers, population_layers

    if asked is not None and (unknown := [m for m in asked if m not in MODES]):
        raise UserError(f"unknown mode {', '.join(unknown)}: choose of {', '.join(MODES)}")
    layers = batch_statistics_layers(model)
    population = population_layers(model)
    have = ["running"]
    if layers:
        have.append("batch")
    if population and len(population) == len(layers):
        have[1:1] = ["precise", "target"]
    if asked is None:
        return have
    if missing := [m for m in asked if m not in have]:
        why = (f"norm={norm} has no batch statistics (BN has)" if not layers else
               f"norm={norm}'s statistics are not BN's population statistics (Batch Renorm's and the "
               "recurrent BN's per-step ones are not re-estimated here)")
        raise UserError(f"mode {', '.join(missing)} cannot evaluate this run: {why}; it has {', '.join(have)}")
    return [m for m in MODES if m in asked]


def variants(mode, model, layers, stats, x, y, adapt_images, priors, batch_size, orders, seed, eval_batch):
    """(the row's settings, a function measuring (accuracy, loss, examples)) for each setting of a mode."""
    import torch

    from bnexp.evaluation import batch_statistics, metrics, restore_buffers
    from bnexp.norm import adapt_population

    def inference(mode_stats, adapt=lambda: None):
        def run():  # the inference network with the mode's statistics, over the whole set
            restore_buffers(layers, mode_stats)
            adapt()
            model.eval()
            return metrics(model, zip(x.split(eval_batch), y.split(eval_batch), strict=True))
        return run

    empty = {"adapt_images": None, "prior": None, "batch_size": None, "batch_order": None}
    if mode in ("running", "precise"):
        yield empty, inference(stats[mode])
    elif mode == "target":
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)).to(x.device)
        for n in adapt_images:
            if n > len(x):
                raise UserError(f"--adapt-images={n} exceeds the {len(x)} test images")
            for prior in priors:
                def adapt(n=n, prior=prior):
                    adapt_population(model, x[order[:n]], prior)
                yield {**empty, "adapt_images": n, "prior": prior}, inference(stats["running"], adapt)
    elif mode == "batch":
        for order in orders:
            def run(order=order):
                with batch_statistics(model, layers):
                    return metrics(model, batches_in_order(x, y, batch_size, order, seed))
            yield {**empty, "batch_size": batch_size, "batch_order": order}, run


def batches_in_order(x, y, size: int, order: str, seed: int):
    """The test set in batches of `size`: shuffled (by seed), or by_class (each batch one class, in
    the set's order); a class's last partial batch is left out, so every batch has `size` images."""
    import torch

    if order == "shuffled":
        groups = [torch.randperm(len(y), generator=torch.Generator().manual_seed(seed)).to(y.device)]
    else:
        groups = [torch.nonzero(y == c).flatten() for c in y.unique()]
    for index in groups:
        for chunk in index.split(size):
            if len(chunk) == size:
                yield x[chunk], y[chunk]


def checkpoint_steps(run_dir: Path) -> list[int]:
    from bnexp import checkpoint

    return sorted(checkpoint.step_of(p) for p in checkpoint.checkpoints(run_dir))


def write(out: Path, rows: list[dict], meta: dict) -> None:
    """The rows as CSV, JSON and TensorBoard scalars, in a folder that appears whole or not at all."""
    from torch.utils.tensorboard import SummaryWriter

    from bnexp.summary import write_json_atomic

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with open(tmp / "evaluation.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    write_json_atomic(tmp / "evaluation.json", {**meta, "rows": rows})
    with SummaryWriter(log_dir=str(tmp)) as tb:
        for row in rows:
            tb.add_scalar(f"evaluate/{row['set']}/{row['label']}/accuracy", row["accuracy"], row["checkpoint_step"])
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def label(row: dict) -> str:
    """A mode with its settings in one word (runs.csv's column evaluate/<set>/<label>)."""
    if row["mode"] == "target":
        return f"target_n{row['adapt_images']}_prior{row['prior']}"
    if row["mode"] == "batch":
        return f"batch_{row['batch_order']}_{row['batch_size']}"
    return row["mode"]
