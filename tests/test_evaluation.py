"""The inference network with BN folded (bnexp/evaluation.py fold_batch_norms): the same function
as the eval-mode network, for the MLP and the Inception-style net, in both memory layouts."""

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from bnexp import models
from bnexp.config import compose
from bnexp.evaluation import fold_batch_norms
from bnexp.probes import PercentileProbe

BATCH = OmegaConf.create({"name": "batch", "eps": 1e-3, "momentum": 0.5})
LAYER = OmegaConf.create({"name": "layer", "eps": 1e-5})
MLP = compose(["model.hidden=[50,50]", "model.init_std=0.5"]).model
INCEPTION = OmegaConf.create({"name": "inception", "width": 0.125, "stem": "small", "stem_pool": True,
                              "activation": "relu", "dropout": 0.0, "lrn": False})


def trained(model_cfg, norm_cfg, channels_last=False):
    """A network whose BN statistics and affine parameters are far from their initial values, so
    that folding them is not a no-op."""
    torch.manual_seed(0)
    model = models.build(model_cfg, norm_cfg, (1, 28, 28), 10)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.weight.uniform_(0.5, 2.0)
                m.bias.uniform_(-1.0, 1.0)
        for name, p in model.named_parameters():
            if name.endswith(".scale"):  # SkipInit's branch scales, 0 at the start: make the branches count
                p.fill_(0.7)
        for _ in range(3):  # running statistics of shifted, scaled inputs
            model(3 * torch.rand(16, 1, 28, 28) + 1)
    return model


RESIDUAL = OmegaConf.merge(MLP, {"residual": True, "skipinit": True})


@pytest.mark.parametrize("model_cfg, channels_last", [(MLP, False), (RESIDUAL, False), (INCEPTION, False),
                                                      (INCEPTION, True)])
def test_folded_network_computes_the_eval_network(model_cfg, channels_last):
    model = trained(model_cfg, BATCH, channels_last)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batch_norms(model)
    assert model.training  # the model itself is left as it was: training mode, BN layers, values
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    n_bn = sum(isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) for m in model.modules())
    assert n_bn > 0 and not any(isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) for m in folded.modules())
    assert all(m.inplace for m in folded.modules() if isinstance(m, nn.ReLU))  # the probe must copy its input
    x = 3 * torch.rand(20, 1, 28, 28) + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    model.eval()
    with torch.inference_mode():
        expected, got = model(x), folded(x)
    assert (expected - expected.mean(0)).abs().max() > 0.1  # the outputs depend on the input
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # The percentile probe, recording the folded network's own units, sees the same pre-activations.
    found = []
    for net in (model, folded):
        probe = PercentileProbe(model.probe_points(), unit=1)
        with probe.recording(net.probe_points()), torch.inference_mode():
            net(x)
        found.append(probe.percentiles())
    assert found[0].keys() == found[1].keys() and len(found[0]) == 3 * len(model.probe_points())
    assert all(abs(found[0][k] - found[1][k]) < 1e-4 for k in found[0])


@pytest.mark.parametrize("norm_cfg, kept", [(LAYER, nn.GroupNorm), (OmegaConf.merge(BATCH, {"position": "post"}),
                                                                   nn.BatchNorm1d)])
def test_other_norms_and_a_bn_after_the_nonlinearity_are_kept(norm_cfg, kept):
    model = trained(MLP, norm_cfg)
    folded = fold_batch_norms(model)
    assert sum(isinstance(m, kept) for m in folded.modules()) == 2
    x = torch.rand(5, 1, 28, 28)
    model.eval()
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), model(x), rtol=0, atol=0)


def test_a_run_evaluates_the_same_folded_or_not(bnexp, runs_root):
    """trainer.eval_fold_bn changes how the test set is evaluated, not what: the same accuracies,
    losses and probe percentiles (to float rounding) for a channels_last BN-Inception run."""
    done = bnexp("train", "-m", "experiment=bn_x5", "data=synthetic", "model.width=0.0625", "data.n_train=256",
                 "data.n_test=64", "trainer.max_steps=20", "trainer.eval_every=10", "trainer.log_every=10",
                 "trainer.channels_last=true", "trainer.progress=false", "trainer.eval_fold_bn=true,false")
    assert done.returncode == 0, done.stderr
    scalars = []
    for path in sorted(runs_root.rglob("metrics.csv")):
        rows = [row.split(",") for row in path.read_text().splitlines()[1:]]
        scalars.append({(step, key): float(v) for step, key, v in rows if key.startswith(("test/", "probe/"))})
    assert len(scalars) == 2 and scalars[0].keys() == scalars[1].keys()
    assert {key for _, key in scalars[0]} >= {"test/accuracy", "test/loss", "probe/inception3a/p50"}
    assert all(abs(scalars[0][k] - scalars[1][k]) < 1e-4 for k in scalars[0])


def test_eval_train_logs_the_training_sets_accuracy_beside_the_test_sets(bnexp, runs_root):
    """trainer.eval_train: train_set/accuracy and train_set/loss at every evaluation, of each
    replica, on the training subset; an MLP that memorises 32 examples shows the train/test gap."""
    done = bnexp("train", "data=synthetic", "data.train_subset=32", "data.noise=3.0", "trainer.batch_size=16",
                 "trainer.max_steps=300", "trainer.eval_every=100", "trainer.log_every=50", "optim.lr=0.5",
                 "trainer.eval_train=true", "trainer.replicas=2", "trainer.progress=false")
    assert done.returncode == 0, done.stderr
    paths = sorted(runs_root.rglob("seed_*/metrics.csv"))
    assert len(paths) == 2
    for path in paths:
        rows = [row.split(",") for row in path.read_text().splitlines()[1:]]
        curve = {tag: {int(step): float(v) for step, t, v in rows if t == tag}
                 for tag in ("test/accuracy", "train_set/accuracy", "train_set/loss")}
        assert curve["train_set/accuracy"].keys() == curve["test/accuracy"].keys() == {0, 100, 200, 300}
        assert curve["train_set/accuracy"][300] == 1.0 > curve["test/accuracy"][300] + 0.05
        assert curve["train_set/loss"][300] < curve["train_set/loss"][0]
