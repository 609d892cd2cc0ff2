"""The LSTM (model=lstm) and its recurrent norms, against references written out here."""

import csv
import io

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from bnexp import checkpoint, models, norm
from bnexp.config import check_replicable, compose, validate
from bnexp.errors import UserError
from bnexp.models.lstm import as_sequence
from bnexp.train import run

from conftest import only

SMALL = ["model=lstm", "model.hidden=8"]


def build(*overrides, shape=(1, 6, 5)):
    cfg = compose([*SMALL, *overrides])
    return models.build(cfg.model, cfg.norm, shape, 3)


def test_without_a_norm_it_computes_nn_lstm():
    """The written-out cell is nn.LSTM's function, outputs and gradients, over two layers."""
    torch.manual_seed(0)
    model = build("norm=none", "model.layers=2")
    reference = nn.LSTM(5, 8, num_layers=2)
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            getattr(reference, f"weight_ih_l{i}").copy_(layer.input_weights.weight)
            getattr(reference, f"weight_hh_l{i}").copy_(layer.hidden_weights.weight)
            getattr(reference, f"bias_ih_l{i}").copy_(layer.bias)
            getattr(reference, f"bias_hh_l{i}").zero_()
    x = torch.randn(4, 1, 6, 5, requires_grad=True)
    ours = model.layers[1](model.layers[0](as_sequence(x, "rows")))
    theirs, _ = reference(as_sequence(x, "rows"))
    torch.testing.assert_close(ours, theirs)
    grad_ours, = torch.autograd.grad(ours.square().sum(), x)
    grad_theirs, = torch.autograd.grad(theirs.square().sum(), x)
    torch.testing.assert_close(grad_ours, grad_theirs)


def reference_bn_lstm(layer, xs, eps=1e-5):
    """Cooijmans et al.'s BN-LSTM written out: each step's terms normalized with that step's batch
    statistics, the gate terms without shift, the cell with one."""

    def bn(v, gamma, beta=None):
        mean, var = v.mean(0), v.var(0, unbiased=False)
        y = (v - mean) / torch.sqrt(var + eps) * gamma
        return y if beta is None else y + beta

    h = c = torch.zeros(xs.shape[1], layer.hidden)
    out = []
    for x in xs:
        gates = (bn(x @ layer.input_weights.weight.T, layer.input_norm.weight)
                 + bn(h @ layer.hidden_weights.weight.T, layer.hidden_norm.weight) + layer.bias)
        i, f, g, o = gates.split(layer.hidden, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(bn(c, layer.cell_norm.weight, layer.cell_norm.bias))
        out.append(h)
    return torch.stack(out)


def test_the_bn_cell_matches_a_written_out_reference_with_its_gradients():
    torch.manual_seed(1)
    model = build("norm=batch")
    layer = model.layers[0]
    with torch.no_grad():  # gains and shifts away from their initial values, so that they matter
        for p in (layer.input_norm.weight, layer.hidden_norm.weight, layer.cell_norm.weight, layer.cell_norm.bias):
            p.uniform_(0.2, 1.5)
    xs = torch.randn(6, 10, 5)
    ours, theirs = layer(xs), reference_bn_lstm(layer, xs)
    torch.testing.assert_close(ours, theirs)
    params = list(layer.parameters())
    for a, b in zip(torch.autograd.grad(ours.sum(), params), torch.autograd.grad(theirs.sum(), params), strict=True):
        torch.testing.assert_close(a, b)


def test_bn_gains_start_at_a_tenth_and_ln_gains_at_one_unless_set():
    assert torch.all(build("norm=batch").layers[0].cell_norm.weight == 0.1)
    assert torch.all(build("norm=layer").layers[0].hidden_norm.weight == 1.0)
    assert torch.all(build("norm=batch", "norm.gain_init=1.0").layers[0].input_norm.weight == 1.0)
    assert build("norm=batch").layers[0].input_norm.bias is None  # the gate bias b is the shift


def test_norm_where_normalizes_only_the_terms_named():
    layer = build("norm=batch", "norm.where=[input]").layers[0]
    assert isinstance(layer.input_norm, norm.RecurrentBatchNorm)
    assert layer.hidden_norm is None and layer.cell_norm is None


def test_each_step_keeps_its_own_statistics_and_inference_uses_them():
    torch.manual_seed(2)
    model = build("norm=batch", "norm.momentum=1.0")  # running statistics = the last batch's
    x = torch.randn(16, 1, 6, 5) * torch.linspace(0.5, 3, 6).view(1, 1, 6, 1)  # rows of growing spread
    model.train()
    model(x)
    input_norm = model.layers[0].input_norm
    assert input_norm.running_var.shape == (6, 32)
    # Row t's statistics are row t's: the variance grows with the rows, each step's its own.
    terms = model.layers[0].input_weights(as_sequence(x, "rows"))
    torch.testing.assert_close(input_norm.running_mean, terms.mean(1))
    torch.testing.assert_close(input_norm.running_var, terms.var(1))
    assert (input_norm.running_var[-1] > input_norm.running_var[0]).all()
    # In eval an example's output does not depend on the others in its batch: population statistics.
    model.eval()
    torch.testing.assert_close(model(x[:1]), model(x)[:1])


def test_steps_beyond_the_training_length_use_the_last_steps_statistics():
    layer_norm = norm.RecurrentBatchNorm(4, steps=3).eval()
    with torch.no_grad():
        layer_norm.running_mean.copy_(torch.arange(12.0).view(3, 4))
        layer_norm.running_var.copy_(torch.arange(1.0, 13.0).view(3, 4))
    x = torch.randn(5, 4)
    torch.testing.assert_close(layer_norm(x, 7), layer_norm(x, 2))
    assert not torch.allclose(layer_norm(x, 1), layer_norm(x, 2))
    model = build("norm=batch").eval()
    assert model(torch.randn(2, 1, 9, 5)).shape == (2, 3)  # 9 rows where it trained on 6


def test_shared_statistics_pool_the_steps():
    """norm.stats=shared: one mean and variance for every step, those of all steps' values together."""
    scale, offset = torch.tensor([1.0, 2.0, 4.0]).view(3, 1, 1), torch.tensor([0.0, 1.0, -2.0]).view(3, 1, 1)
    values = torch.randn(3, 50, 4) * scale + offset  # three steps, each its own statistics
    shared = norm.RecurrentBatchNorm(4, steps=3, per_step=False).eval()
    with torch.no_grad():
        shared.running_mean.copy_(values.mean(1))
        shared.running_var.copy_(values.var(1, unbiased=False))
    mean, var = shared.population(0)
    torch.testing.assert_close(mean, values.flatten(0, 1).mean(0))
    torch.testing.assert_close(var, values.flatten(0, 1).var(0, unbiased=False))
    assert all(torch.equal(shared.population(t)[1], var) for t in range(3))


def test_layer_norm_does_not_depend_on_the_batch():
    torch.manual_seed(3)
    model = build("norm=layer").train()
    x = torch.randn(8, 1, 6, 5)
    torch.testing.assert_close(model(x[:1]), model(x)[:1])
    assert not any(b.numel() for b in model.buffers())


@pytest.mark.parametrize("sequence, steps, features",
                         [("rows", 6, 5), ("columns", 5, 6), ("pixels", 30, 1), (10, 10, 3)])
def test_the_image_is_read_as_the_sequence_asked_for(sequence, steps, features):
    x = torch.arange(2 * 30.0).view(2, 1, 6, 5)
    xs = as_sequence(x, sequence)
    assert xs.shape == (steps, 2, features)
    if sequence == "rows":
        assert torch.equal(xs[1, 0], x[0, 0, 1])
    if sequence == "columns":
        assert torch.equal(xs[1, 0], x[0, 0, :, 1])
    assert build(f"model.sequence={sequence}").layers[0].input_weights.in_features == features


@pytest.mark.parametrize("overrides, message", [
    (["norm=group"], "norm=group cannot normalize model=lstm: an LSTM's terms"),
    (["norm=instance"], "norm=instance cannot normalize model=lstm"),
    (["norm=ghost"], "norm=ghost cannot normalize model=lstm"),
    (["norm=batch_renorm"], "norm=batch_renorm cannot normalize model=lstm"),
    (["model.hidden=0"], "model.hidden must be a whole number >= 1, got 0"),
    (["model.sequence=5"], "model.sequence=5 steps do not divide an example's 784 values"),
    (["model.sequence=diagonal"], "model.sequence must be one of rows, columns, pixels"),
    (["data=synthetic", "data.shape=[64]"], "model.sequence=rows reads images"),
    (["norm.where=[input,input]"], "norm.where must be a list of distinct paths"),
    (["norm.where=[output]"], "norm.where must be a list of distinct paths"),
    (["norm.stats=pooled"], "norm.stats must be one of per_step, shared"),
    (["norm.position=post"], "norm.position=post places a norm after"),
    (["trainer.batch_size=1"], "use norm=none or layer for batch size 1"),
    (["probes.ics_every=10"], "the ICS and variance-shift probes read a feed-forward net's layers"),
])
def test_settings_without_a_recurrent_meaning_are_refused_by_name(overrides, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(")):
        validate(compose(["model=lstm", *overrides]))


@pytest.mark.parametrize("overrides, message", [
    (["norm.stats=shared"], "norm.stats=shared pools statistics over time steps; model=mlp has none"),
    (["norm.where=[input]"], "norm.where chooses the terms of a recurrent cell"),
])
def test_the_recurrent_settings_are_refused_for_feed_forward_models(overrides, message):
    with pytest.raises(UserError, match=message):
        validate(compose(overrides))


RUN = ["data=synthetic", "data.shape=[1,8,8]", "data.n_train=256", "data.n_test=128", "model=lstm", "model.hidden=16",
       "optim=adam", "optim.lr=0.01", "optim.clip_norm=0.5", "trainer.batch_size=32", "trainer.max_steps=60",
       "trainer.eval_every=30", "trainer.log_every=10", "trainer.checkpoint_every=30", "trainer.threads=1",
       "trainer.progress=false"]


@pytest.mark.parametrize("norm_name", ["batch", "layer"])
def test_a_resumed_run_ends_bitwise_like_the_uninterrupted_one(tmp_path, norm_name):
    cfg = compose([*RUN, f"norm={norm_name}"])
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    for d in (whole, cut):
        d.mkdir()
        assert only(run(cfg, d))["status"] == "completed"
    # Back to step 30, as if killed there: the step-60 checkpoint and the summary gone.
    for path in checkpoint.checkpoints(cut):
        if torch.load(path, weights_only=False)["step"] == 60:
            path.unlink()
    (cut / "summary.json").unlink()
    assert only(run(cfg, cut))["status"] == "completed"
    [a], [b] = ([torch.load(p, weights_only=False) for p in checkpoint.checkpoints(d)[:1]] for d in (whole, cut))
    assert a["step"] == b["step"] == 60
    for name, value in a["model"].items():
        assert torch.equal(b["model"][name], value), name
    for i, state in a["optimizer"]["state"].items():  # Adam's moments and step count
        for key, value in state.items():
            assert torch.equal(b["optimizer"]["state"][i][key], value), key


def test_gradient_clipping_bounds_each_steps_gradient(tmp_path):
    from bnexp.stepper import OneModel

    torch.manual_seed(0)
    cfg = compose(RUN)
    model = models.build(cfg.model, cfg.norm, (1, 8, 8), 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    stepper = OneModel(model, optimizer, cfg.trainer, clip_norm=1e-3)
    x, y = torch.randn(1, 32, 1, 8, 8), torch.randint(0, 10, (1, 32))
    stepper.step(x, y, 0.0)
    total = torch.stack([p.grad.norm() for p in model.parameters()]).norm()
    assert total == pytest.approx(1e-3, rel=1e-4)


def test_each_replicas_gradient_is_clipped_as_its_run_alone():
    from bnexp.stepper import clip_each

    torch.manual_seed(0)
    stacked = [torch.randn(3, 4, 5, requires_grad=True), torch.randn(3, 7, requires_grad=True)]
    for p, scale in zip(stacked, (1.0, 10.0), strict=True):
        p.grad = torch.randn_like(p) * scale * torch.tensor([0.01, 1.0, 5.0]).view(-1, *[1] * (p.dim() - 1))
    alone = [[p.grad[r].clone() for p in stacked] for r in range(3)]
    for grads in alone:  # torch's clipping of each replica's gradients on their own
        leaves = [torch.zeros_like(g, requires_grad=True) for g in grads]
        for leaf, g in zip(leaves, grads, strict=True):
            leaf.grad = g
        nn.utils.clip_grad_norm_(leaves, 2.0)
    clip_each(stacked, 2.0)
    for r in range(3):
        for p, g in zip(stacked, alone[r], strict=True):
            torch.testing.assert_close(p.grad[r], g)
    assert torch.stack([p.grad[0].norm() for p in stacked]).norm() < 2.0  # the small one left as it was


def test_the_bn_lstm_trains_and_evaluates_with_batch_statistics(tmp_path):
    """trainer.eval_batchstats sees the recurrent BN layers, and leaves their statistics as they were."""
    cfg = compose([*RUN, "norm=batch", "trainer.eval_batchstats=true"])
    (tmp_path / "run").mkdir()
    summary = only(run(cfg, tmp_path / "run"))
    assert summary["status"] == "completed" and summary["best_accuracy"] > 0.5
    rows = (tmp_path / "run" / "metrics.csv").read_text()
    assert "test/error_batchstats" in rows


def test_a_diverging_lstm_is_a_result(tmp_path):
    # Its gates are bounded: only a learning rate that overflows the weights makes the loss non-finite.
    cfg = compose([*RUN, "norm=none", "optim=sgd", "optim.lr=1.0e38", "optim.clip_norm=0"])
    (tmp_path / "run").mkdir()
    assert only(run(cfg, tmp_path / "run"))["status"] == "diverged"


def test_feed_forward_bn_takes_norm_gain_init():
    cfg = compose(["norm.gain_init=0.5"])
    model = models.build(cfg.model, cfg.norm, (1, 28, 28), 10)
    gains = [m.weight for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(gains) == 3 and all(torch.all(g == 0.5) for g in gains)


def test_the_loss_moves_on_with_adam():
    torch.manual_seed(0)
    model = build("norm=layer")
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 1, 6, 5), torch.randint(0, 3, (16,))
    first = None
    for _ in range(30):
        loss = F.cross_entropy(model(x), y)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first
    assert OmegaConf.select(compose(["optim=adam"]), "optim.betas") == [0.9, 0.999]


@pytest.mark.parametrize("per_step", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_all_steps_at_once_is_each_step_in_turn(per_step, training):
    torch.manual_seed(4)
    at_once, in_turn = (norm.RecurrentBatchNorm(6, steps=4, gain=0.7, per_step=per_step) for _ in range(2))
    means, variances = torch.randn(4, 6), torch.rand(4, 6) + 0.5
    for layer in (at_once, in_turn):
        with torch.no_grad():
            layer.running_mean.copy_(means)
            layer.running_var.copy_(variances)
        layer.train(training)
    xs = torch.randn(4 if training else 7, 9, 6) * 3 + 1  # in eval longer than trained: the last step's statistics
    torch.testing.assert_close(at_once.all_steps(xs), torch.stack([in_turn(x, t) for t, x in enumerate(xs)]))
    torch.testing.assert_close(at_once.running_mean, in_turn.running_mean)
    torch.testing.assert_close(at_once.running_var, in_turn.running_var)


class _ReadsTheFirstRow(nn.Module):
    """Class 0 where an image's first row is the blank value 2.5, class 1 elsewhere."""

    def forward(self, x):
        first_blank = (x[:, 0, 0] == 2.5).all(1).float()
        return torch.stack([first_blank, 1 - first_blank], 1)


class _Images:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def eval_batches(self, split="test"):
        yield from zip(self.x.split(3), self.y.split(3), strict=True)


def test_longer_sequences_add_blank_rows_before_and_after_each_image():
    from bnexp.probes import longer_sequences

    seen = []
    model = _ReadsTheFirstRow()
    model.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0].shape[2]))
    data = _Images(torch.zeros(6, 1, 4, 5), torch.ones(6, dtype=torch.long))
    found = longer_sequences(model, data, [2, 3], torch.tensor([2.5]), accuracy=0.75)
    assert set(seen) == {6, 7}  # 4 rows and 2 or 3 more
    assert found["longer/prepend2/accuracy"] == found["longer/prepend3/accuracy"] == 0.0  # a blank first row
    assert found["longer/append2/accuracy"] == found["longer/append3/accuracy"] == 1.0
    assert found["longer/prepend3/drop"] == 0.75 and found["longer/append3/drop"] == -0.25


def test_blank_is_intensity_zero_as_the_data_normalize_it():
    from bnexp.data import blank

    cfg = compose(["data=mnist"])
    torch.testing.assert_close(blank(cfg.data), torch.tensor([-cfg.data.mean / cfg.data.std]))


def test_a_run_reports_the_accuracy_lost_on_longer_sequences(tmp_path):
    from bnexp import report
    from bnexp.runs import find_run_dirs, load_run

    cfg = compose([*RUN, "norm=batch", "probes.longer_rows=[2,8]"])
    (tmp_path / "run").mkdir()
    summary = only(run(cfg, tmp_path / "run"))
    assert summary["status"] == "completed"
    variants = report.group_variants([load_run(p) for p in find_run_dirs([tmp_path])])
    rows = report.summarize(variants, next(iter(variants)), None, [])
    [row] = list(csv.DictReader(io.StringIO(report.runs_csv(variants, rows, []))))
    drops = [k for k in row if k.startswith("longer/")]
    assert drops == ["longer/append2/drop", "longer/append8/drop", "longer/prepend2/drop", "longer/prepend8/drop"]
    assert all(-1 <= float(row[k]) <= 1 for k in drops)


@pytest.mark.parametrize("overrides, message", [
    (["probes.longer_rows=[4]"], "probes.longer_rows tests a recurrent model on longer sequences; model=mlp"),
    (["model=lstm", "model.sequence=columns", "probes.longer_rows=[4]"], "lengthens the sequence only with "
     "model.sequence=rows"),
    (["model=lstm", "probes.longer_rows=[0]"], "probes.longer_rows must be a list of distinct whole numbers"),
    (["model=lstm", "probes.longer_rows=[4,4]"], "probes.longer_rows must be a list of distinct whole numbers"),
])
def test_longer_sequences_are_refused_where_they_mean_nothing(overrides, message):
    with pytest.raises(UserError, match=message):
        validate(compose(overrides))


def test_h0_noise_is_drawn_in_training_only():
    model = build("norm=none", "model.h0_noise=0.5")
    xs = torch.zeros(6, 4, 5)
    [layer] = model.layers
    h, c = layer.initial_state(xs)
    assert h.std() > 0.2 and not c.any()  # noise in h_0 alone
    model.eval()
    h, c = layer.initial_state(xs)
    assert not h.any() and not c.any()


def test_h0_noise_keeps_a_norm_of_blank_rows_finite():
    """MNIST's first rows are 0 in every image: without noise in h_0 each step's terms are 0, and a
    norm of a zero vector multiplies the gradient by gain / sqrt(eps) per step, past float32's range."""
    x, y = torch.zeros(8, 1, 28, 28), torch.arange(8) % 3
    x[:, :, 20:] = torch.rand(8, 1, 8, 28)  # ink in the last rows only
    finite = {}
    for noise in (0.0, 0.1):
        torch.manual_seed(0)
        model = build("norm=layer", f"model.h0_noise={noise}", shape=(1, 28, 28))
        F.cross_entropy(model(x), y).backward()
        finite[noise] = all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert finite == {0.0: False, 0.1: True}


def test_h0_noise_is_refused_with_replicas():
    with pytest.raises(UserError, match="model.h0_noise draws its noise"):
        check_replicable(compose(["model=lstm", "model.h0_noise=0.1", "trainer.replicas=2"]))


def test_lengths_figure_reads_accuracy_at_each_length_from_runs_csv(tmp_path):
    """scripts/bn_rnn_lengths.py: accuracy at 28 + k rows = the final accuracy minus that run's drop;
    unfinished runs left out; the figure written."""
    import subprocess
    import sys
    from pathlib import Path

    header = "variant,run,status,final_accuracy,longer/append4/drop,longer/prepend4/drop,longer/append16/drop\n"
    rows = ["bn,a,completed,0.9,0.1,0.2,0.5", "bn,b,completed,0.8,0.0,0.2,0.3", "bn,c,interrupted,0.1,0.0,0.0,0.0",
            "ln,a,completed,0.9,0.0,0.0,0.05", "ln,b,completed,0.9,0.0,0.0,0.05"]
    (tmp_path / "runs.csv").write_text(header + "\n".join(rows) + "\n")
    scripts = Path(__file__).parent.parent / "scripts"
    sys.path.insert(0, str(scripts))
    try:
        from bn_rnn_lengths import lengths
    finally:
        sys.path.remove(str(scripts))
    from bnexp.claims import read_runs_csv

    found = lengths(read_runs_csv((tmp_path / "runs.csv").read_text()))
    append = {length: e.value for length, e in found["append"]["bn"]}
    assert append == pytest.approx({28: 0.85, 32: 0.8, 44: 0.45})
    assert [length for length, _ in found["prepend"]["ln"]] == [28, 32]
    assert found["append"]["bn"][0][1].n == 2  # the interrupted run left out
    done = subprocess.run([sys.executable, scripts / "bn_rnn_lengths.py", tmp_path / "runs.csv", "--out",
                           tmp_path / "lengths.png"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "lengths.png").stat().st_size > 1000
