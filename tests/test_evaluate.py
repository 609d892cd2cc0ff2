"""`bnexp evaluate`: each way of getting BN's statistics against a computation by hand, on the
clean and the shifted test sets, and the refusals."""

import csv
import hashlib
import json

import pytest
import torch
from test_shift import digits
from torch import nn

from bnexp import checkpoint, data, models, norm, shift
from bnexp.config import load_run_config
from bnexp.errors import UserError
from bnexp.evaluate import batches_in_order, evaluate
from bnexp.train import run

from conftest import FAST, only

MLP = ["experiment=fig1_mnist", "trainer.max_steps=60", "trainer.eval_every=30", "trainer.log_every=30",
       "trainer.progress=false", "trainer.batch_size=20"]


@pytest.fixture
def fake_mnist(monkeypatch):
    """MNIST-shaped digits (300 to train, 100 to test) whose class is where the blob sits."""
    labels = torch.arange(10).repeat(40)
    images = digits(400, seed=5)
    images = torch.stack([torch.roll(img, shifts=2 * int(k) - 9, dims=1)
                          for img, k in zip(images, labels, strict=True)])
    monkeypatch.setattr(data, "load_mnist", lambda root, download: ((images[:300], labels[:300]),
                                                                     (images[300:], labels[300:])))


@pytest.fixture
def bn_run(fake_mnist, compose, tmp_path):
    run_dir = tmp_path / "bn"
    assert only(run(compose(*MLP, f"data.root={tmp_path / 'data'}"), run_dir))["status"] == "completed"
    return run_dir


def rows_of(out) -> list[dict]:
    with open(out / "evaluation.csv") as f:
        return list(csv.DictReader(f))


def network(run_dir):
    cfg = load_run_config(run_dir)
    source = data.build(cfg.data, cfg.trainer, torch.device("cpu"))
    model = models.build(cfg.model, cfg.norm, source.input_shape, source.num_classes)
    state = checkpoint.load_latest(run_dir)
    model.load_state_dict(state["model"])
    return model, source, state["step"], cfg


def accuracy(model, x, y) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).sum().item() / len(y)


def test_running_mode_is_the_runs_own_last_evaluation_and_the_checkpoint_is_untouched(bn_run):
    files = sorted(checkpoint.checkpoints(bn_run))
    before = [hashlib.sha256(p.read_bytes()).hexdigest() for p in files]
    rows, out = evaluate(bn_run, sets=["clean"], modes=["running"])
    summary = json.loads((bn_run / "summary.json").read_text())
    assert rows[0]["accuracy"] == pytest.approx(summary["final_accuracy"], abs=1e-9)
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(checkpoint.checkpoints(bn_run))] == before
    assert out == bn_run / "evaluate" / "step_60" and rows_of(out)[0]["mode"] == "running"
    assert json.loads((out / "evaluation.json").read_text())["rows"][0]["accuracy"] == rows[0]["accuracy"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out)).Reload()
    assert [(e.step, e.value) for e in events.Scalars("evaluate/clean/running/accuracy")] == [
        (60, pytest.approx(rows[0]["accuracy"]))]


def test_precise_statistics_are_the_explicit_average_over_the_training_images(bn_run):
    rows, _ = evaluate(bn_run, sets=["clean"], modes=["precise"], precise_images=70)  # 3 batches of 20
    model, source, step, cfg = network(bn_run)
    bns = norm.population_layers(model)
    inputs = {bn: [] for bn in bns}
    hooks = [bn.register_forward_pre_hook(lambda layer, args: inputs[layer].append(args[0].clone())) for bn in bns]
    model.train()  # the training network: batch statistics at every layer
    with torch.no_grad():
        for i in range(3):
            model(source.next_batch(step + i)[0])
    for hook in hooks:
        hook.remove()
    for bn in bns:
        batches = inputs[bn]
        bn.running_mean.copy_(torch.stack([b.mean(0) for b in batches]).mean(0))
        bn.running_var.copy_(torch.stack([b.var(0) for b in batches]).mean(0))  # unbiased: m/(m-1) x biased
    assert rows[0]["accuracy"] == pytest.approx(accuracy(model, source.test_x, source.test_y), abs=1e-9)


@pytest.mark.parametrize("layer", ["torch", "paper", "conv"])
def test_target_statistics_with_a_prior_are_the_n_over_n_plus_prior_mix_layer_by_layer(layer):
    torch.manual_seed(0)
    if layer == "conv":
        net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        x = torch.randn(5, 2, 7, 7) * 2 + 1
    else:
        bn = nn.BatchNorm1d if layer == "torch" else norm.PaperBatchNorm
        net = nn.Sequential(nn.Linear(4, 3), bn(3), nn.ReLU(), nn.Linear(3, 4), bn(4))
        x = torch.randn(5, 4) * 2 + 1
    first, second = net[1], net[4]
    for bn in (first, second):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 2)
    prior, n = 7, len(x)
    old = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in (first, second)]
    net.train()
    norm.adapt_population(net, x, prior)
    assert net.training  # left in the mode it was in

    def stats(h):
        dims = (0,) if h.dim() == 2 else (0, 2, 3)
        return h.mean(dims), h.var(dims)  # m/(m-1) x the biased variance

    def mixed(h, k):
        mean, var = stats(h)
        source, target = prior / (prior + n), n / (prior + n)
        return source * old[k][0] + target * mean, source * old[k][1] + target * var

    with torch.no_grad():
        h1 = net[0](x)
        mean1, var1 = mixed(h1, 0)
        shape = (1, -1) if h1.dim() == 2 else (1, -1, 1, 1)
        a1 = torch.relu((h1 - mean1.view(shape)) / torch.sqrt(var1.view(shape) + first.eps) * first.weight.view(shape)
                        + first.bias.view(shape))
        mean2, var2 = mixed(net[3](a1), 1)  # the second layer sees the first one adapted
    for bn, mean, var in ((first, mean1, var1), (second, mean2, var2)):
        torch.testing.assert_close(bn.running_mean, mean)
        torch.testing.assert_close(bn.running_var, var)


def test_target_mode_without_a_prior_is_the_test_images_statistics(bn_run):
    rows, _ = evaluate(bn_run, sets=["clean"], modes=["target"], adapt_images=[100], priors=[0, 10**9])
    model, source, _, _ = network(bn_run)
    running = accuracy(model, source.test_x, source.test_y)
    norm.adapt_population(model, source.test_x, 0)  # all 100 test images: order does not matter
    pure, prior_only = rows
    assert pure["accuracy"] == pytest.approx(accuracy(model, source.test_x, source.test_y), abs=1e-9)
    assert prior_only["accuracy"] == pytest.approx(running, abs=1e-9)  # a prior of 10^9 images: the source's


def test_batch_mode_depends_on_the_batches_and_the_other_modes_do_not(bn_run):
    rows, _ = evaluate(bn_run, sets=["clean"], modes=["running", "precise", "batch"], batch_size=10,
                       batch_orders=["shuffled", "by_class"], precise_images=100)
    again, _ = evaluate(bn_run, sets=["clean"], modes=["running", "precise"], batch_size=3, precise_images=100)
    by = {(r["mode"], r["batch_order"]): r for r in rows}
    assert [r["accuracy"] for r in again] == [by["running", None]["accuracy"], by["precise", None]["accuracy"]]
    # One class per batch: the batch's mean is its class's, normalized away.
    assert by["batch", "by_class"]["accuracy"] < by["batch", "shuffled"]["accuracy"] - 0.3
    assert by["batch", "shuffled"]["examples"] == by["batch", "by_class"]["examples"] == 100


def test_by_class_batches_hold_one_class_and_drop_each_class_remainder():
    y = torch.tensor([0, 1, 0, 2, 0, 1, 1, 0, 2])
    x = torch.arange(9.0)
    batches = list(batches_in_order(x, y, 2, "by_class", seed=0))
    assert [(xb.tolist(), yb.tolist()) for xb, yb in batches] == [
        ([0, 2], [0, 0]), ([4, 7], [0, 0]), ([1, 5], [1, 1]), ([3, 8], [2, 2])]
    shuffled = list(batches_in_order(x, y, 4, "shuffled", seed=1))
    assert len(shuffled) == 2 and sorted(torch.cat([b for b, _ in shuffled]).tolist()) != list(range(8))


def test_shifted_sets_are_the_corrupted_test_set_and_are_reported_by_name(bn_run):
    rows, _ = evaluate(bn_run, sets=["clean", "inverse", "contrast"], modes=["running"], severity=None)
    contrast = shift.severity_of("contrast", None)
    assert [(r["set"], r["severity"]) for r in rows] == [("clean", None), ("inverse", None), ("contrast", contrast)]
    model, source, _, cfg = network(bn_run)
    inverted = (source.test_x * cfg.data.std + cfg.data.mean).mul(-1).add(1)  # 1 - intensity, normalized again
    inverted = (inverted - cfg.data.mean) / cfg.data.std
    assert rows[1]["accuracy"] == pytest.approx(accuracy(model, inverted, source.test_y), abs=0.011)
    assert rows[1]["accuracy"] < rows[0]["accuracy"]


def test_modes_a_model_lacks_are_refused_and_left_out_by_default(fake_mnist, compose, tmp_path):
    plain = tmp_path / "none"
    run(compose(*MLP, "norm=none", f"data.root={tmp_path / 'data'}"), plain)
    rows, _ = evaluate(plain, sets=["clean"])
    assert [r["mode"] for r in rows] == ["running"]
    with pytest.raises(UserError, match="mode precise, batch cannot evaluate this run: norm=none has no batch"):
        evaluate(plain, sets=["clean"], modes=["precise", "batch"])


@pytest.mark.parametrize("args, says", [
    (["--sets", "foggy"], "unknown corruption 'foggy'"),
    (["--modes", "running,exact"], "unknown mode exact"),
    (["--step", "7"], "has no checkpoint of step 7 to evaluate (steps found: 200)"),
    (["--adapt-images", "0"], "--adapt-images takes whole numbers >= 1"),
    (["--adapt-images", "5000"], "--adapt-images=5000 exceeds the"),
    (["--prior", "a"], "--prior takes whole numbers"),
    (["--batch-order", "sorted"], "unknown --batch-order sorted"),
    (["--sets", "shot_noise"], "corruptions are defined for mnist and fashion_mnist, not for data=synthetic"),
    (["--precise-images", "10"], "--precise-images=10 is less than one training batch"),
    (["--modes", "batch", "--batch-size", "100000"], "--batch-size=100000 leaves no whole shuffled batch"),
])
def test_bad_arguments_get_one_clear_line_and_no_result(bnexp, runs_root, tmp_path, args, says):
    assert bnexp("train", *FAST, f"hydra.run.dir={tmp_path / 'run'}").returncode == 0
    done = bnexp("evaluate", str(tmp_path / "run"), *args)
    assert done.returncode == 2 and says in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "run" / "evaluate").exists()


def test_a_run_dir_without_a_checkpoint_is_refused(bnexp, tmp_path):
    (tmp_path / "empty").mkdir()
    done = bnexp("evaluate", str(tmp_path / "empty"))
    assert done.returncode == 2 and "not a bnexp run dir" in done.stderr


def test_family_means_and_the_report_reads_them(bn_run):
    rows, _ = evaluate(bn_run, sets=["all"], modes=["running"])
    by_set = {r["set"]: r for r in rows}
    members = [name for name, c in shift.CORRUPTIONS.items() if c.family == "photometric"]
    mean = sum(by_set[m]["accuracy"] for m in members) / len(members)
    assert by_set["photometric"]["accuracy"] == pytest.approx(mean)
    assert by_set["photometric"]["sets"] == len(members) and by_set["shifted"]["sets"] == len(shift.CORRUPTIONS)
    assert "clean" in by_set and by_set["clean"]["sets"] == 1
    from bnexp.runs import load_run

    curves = load_run(bn_run).curves
    assert curves["evaluate/shifted/running"] == {60: pytest.approx(by_set["shifted"]["accuracy"])}
    partial, _ = evaluate(bn_run, sets=["clean", "rotate"], modes=["running"])  # no family is whole
    assert [r["set"] for r in partial] == ["clean", "rotate"]


def test_a_replicated_runs_group_dir_points_at_its_seeds(bnexp, tmp_path):
    assert bnexp("train", *FAST, "trainer.replicas=2", f"hydra.run.dir={tmp_path / 'group'}").returncode == 0
    done = bnexp("evaluate", str(tmp_path / "group"), "--sets", "clean")
    assert done.returncode == 2 and "is a replicated run: evaluate each of its seed_<s> dirs" in done.stderr
    assert bnexp("evaluate", str(tmp_path / "group" / "seed_1"), "--sets", "clean").returncode == 0


def test_kept_checkpoints_are_evaluated_step_by_step_and_the_report_reads_them(fake_mnist, compose, tmp_path):
    run_dir = tmp_path / "kept"
    cfg = compose(*MLP, "trainer.checkpoint_every=10", "trainer.log_every=10", "trainer.eval_every=10",
                  "trainer.keep_checkpoint_every=20", f"data.root={tmp_path / 'data'}")
    assert only(run(cfg, run_dir))["status"] == "completed"
    # The last two (50, 60) and the multiples of 20; 10 and 30 pruned as usual.
    assert sorted(checkpoint.step_of(p) for p in checkpoint.checkpoints(run_dir)) == [20, 40, 50, 60]
    from bnexp.evaluate import main
    from bnexp.runs import load_run

    assert main([str(run_dir), "--sets", "clean", "--modes", "running,precise", "--precise-images", "40",
                 "--step", "all"]) == 0
    assert sorted(p.name for p in (run_dir / "evaluate").iterdir()) == ["step_20", "step_40", "step_50", "step_60"]
    curves = load_run(run_dir).curves
    assert sorted(curves["evaluate/clean/precise"]) == [20, 40, 50, 60]
    for step in (20, 40, 60):  # each checkpoint's moving averages give that step's evaluation in training
        assert curves["evaluate/clean/running"][step] == pytest.approx(curves["test/accuracy"][step], abs=1e-9)
    assert main([str(run_dir), "--sets", "clean", "--modes", "running", "--step", "30"]) == 2  # pruned


def test_kept_checkpoints_must_fall_on_checkpoints(compose):
    from bnexp.config import validate

    with pytest.raises(UserError, match="keep_checkpoint_every must be a multiple of trainer.checkpoint_every"):
        validate(compose(*MLP, "trainer.checkpoint_every=30", "trainer.keep_checkpoint_every=40"))


def test_an_evaluation_stopped_before_it_was_whole_is_not_read(bn_run):
    from bnexp.runs import load_run

    _, out = evaluate(bn_run, sets=["clean"], modes=["running"])
    out.rename(out.with_name(out.name + ".tmp"))  # as write() leaves it when killed before its rename
    assert not any(tag.startswith("evaluate/") for tag in load_run(bn_run).curves)
