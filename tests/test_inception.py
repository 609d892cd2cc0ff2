"""The Inception-style network, its presets, and the cifar10/imagefolder loaders on real-format fixtures."""

import pickle

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from bnexp import data, models, norm
from bnexp.builders import lr_factor
from bnexp.models.inception import MODULES, Inception, LocalResponseNorm, PointwiseConv

from conftest import run_dirs, summaries

PRESETS = ["inception", "bn_baseline", "bn_x5", "bn_x30", "bn_x5_sigmoid", "inception_x5", "inception_sigmoid"]
BATCH = norm.make(OmegaConf.create({"name": "batch", "eps": 1e-5, "momentum": 0.1}))
NONE = norm.make(OmegaConf.create({"name": "none"}))


@pytest.fixture
def preset(compose):
    return lambda name, *overrides: compose(f"experiment={name}", *overrides)


def count_from_table(in_channels=3, classes=1000):
    """Parameters implied by the paper's layer table, counted by hand (BN: gamma and beta per map)."""
    total = 0

    def conv(c_in, c_out, k):
        nonlocal total
        total += c_in * c_out * k * k + 2 * c_out

    conv(in_channels, 64, 7)
    conv(64, 64, 1)
    conv(64, 192, 3)
    c = 192
    for n1, n3r, n3, nd3r, nd3, _pool, proj, _stride in MODULES.values():
        if n1:
            conv(c, n1, 1)
        conv(c, n3r, 1)
        conv(n3r, n3, 3)
        conv(c, nd3r, 1)
        conv(nd3r, nd3, 3)
        conv(nd3, nd3, 3)
        if proj:
            conv(c, proj, 1)
        c = n1 + n3 + nd3 + (proj or c)
    return total + c * classes + classes


def test_full_size_network_matches_the_table():
    model = Inception(3, 1000, 224, 1.0, "auto", "relu", 0.0, False, BATCH)
    params = sum(p.numel() for p in model.parameters())
    assert params == count_from_table()
    # The paper quotes 13.6M; its own table gives 11.3M (as public BN-Inception ports report).
    # See bnexp/models/inception.py: the difference is not in the table.
    assert params == pytest.approx(11.29e6, rel=0.01)
    assert [m.out_channels for m in model.blocks] == [256, 320, 576, 576, 576, 608, 608, 1056, 1024, 1024]


def test_forward_at_224_px():
    model = Inception(3, 1000, 224, 0.25, "auto", "relu", 0.4, True, BATCH).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 224, 224)).shape == (2, 1000)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_small_stem_keeps_the_paper_resolutions(shape):
    model = Inception(shape[0], 10, shape[-1], 0.125, "auto", "relu", 0.0, False, BATCH)
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen[name] = output.shape

        return hook

    for name in ("3a", "4a", "5a"):
        model.blocks.get_submodule(name).register_forward_hook(record(name))
    model(torch.randn(2, *shape))
    side = shape[-1]
    assert [seen[n][-1] for n in ("3a", "4a", "5a")] == [side, (side + 1) // 2, ((side + 1) // 2 + 1) // 2]


def test_bias_dropped_exactly_where_a_norm_follows():
    with_bn = Inception(1, 10, 28, 0.125, "auto", "relu", 0.0, False, BATCH)
    convs = [m for m in with_bn.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is None for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in with_bn.modules()) == len(convs)
    without = Inception(1, 10, 28, 0.125, "auto", "relu", 0.0, False, NONE)
    assert all(m.bias is not None for m in without.modules() if isinstance(m, nn.Conv2d))


def test_norm_after_the_nonlinearity():
    post = Inception(1, 10, 28, 0.125, "auto", "relu", 0.0, False, BATCH, norm_position="post")
    units = [m for m in post.modules() if type(m).__name__ == "ConvUnit"]
    assert units and all(list(u._modules) == ["conv", "act", "norm"] and u.conv.bias is not None for u in units)
    assert post(torch.rand(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_pointwise_conv_is_the_1x1_convolution(channels_last, bias):
    """On channels_last input the 1x1 convolution is a matrix product of the NHWC view: the same
    values, gradients and output layout as nn.Conv2d with the same parameters."""
    torch.manual_seed(0)
    ours = PointwiseConv(6, 5, bias).double()
    theirs = nn.Conv2d(6, 5, 1, bias=bias).double()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 6, 7, 7, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    a, b = ours(x), theirs(x)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert a.is_contiguous(memory_format=torch.channels_last) == channels_last
    grad = torch.randn_like(a)
    for u, v in zip(torch.autograd.grad(a, [x, *ours.parameters()], grad),
                    torch.autograd.grad(b, [x, *theirs.parameters()], grad), strict=True):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12)


def test_every_stride_1_pointwise_convolution_is_a_pointwise_conv():
    net = Inception(1, 10, 28, 0.125, "auto", "relu", 0.0, False, BATCH)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    pointwise = [m for m in convs if m.kernel_size == (1, 1) and m.stride == (1, 1)]
    assert pointwise and all(isinstance(m, PointwiseConv) for m in pointwise)
    assert all(type(m) is nn.Conv2d for m in convs if m not in pointwise)


@pytest.mark.parametrize("size", [1, 4, 5, 6])
@pytest.mark.parametrize("channels_last", [False, True])
def test_local_response_norm_equals_torchs(size, channels_last):
    """Ours computes torch's function another way (a band-matrix convolution): the same values and
    gradients, for odd and even windows (torch's window is not symmetric for even sizes)."""
    torch.manual_seed(0)
    x = torch.randn(4, 12, 7, 7, dtype=torch.float64) * 30  # large enough that the denominator matters
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    kwargs = dict(alpha=1e-3, beta=0.75, k=2.0)
    ours, theirs = LocalResponseNorm(size, **kwargs)(x), nn.LocalResponseNorm(size, **kwargs)(x)
    assert (theirs - x).abs().max() > 1e-3  # the normalization is not a no-op here
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(ours)
    torch.testing.assert_close(torch.autograd.grad(ours, x, grad)[0], torch.autograd.grad(theirs, x, grad)[0],
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_composes(preset, name):
    cfg = preset(name, "data=synthetic")
    assert cfg.model.name == "inception" and cfg.name == name


def test_recipe_differences_hold(preset):
    # On CIFAR-10, whose images are distorted (MNIST's are not: there "half of none" would hold vacuously).
    base, bn, x5, x30, x5s = (preset(n, "data=cifar10") for n in ("inception", "bn_baseline", "bn_x5", "bn_x30",
                                                                 "bn_x5_sigmoid"))
    assert base.data.distort * base.data.distort_mult > 0
    assert (base.norm.name, bn.norm.name) == ("none", "batch")
    assert base.model.dropout > 0 and base.model.lrn
    for cfg, mult in ((x5, 5), (x30, 30), (x5s, 5)):
        assert cfg.norm.name == "batch"
        assert cfg.model.dropout == 0 and not cfg.model.lrn
        assert cfg.optim.lr * cfg.optim.lr_mult == pytest.approx(mult * base.optim.lr)
        assert cfg.optim.weight_decay * cfg.optim.weight_decay_mult == pytest.approx(base.optim.weight_decay / 5)
        # half the photometric distortion, exactly
        assert cfg.data.distort * cfg.data.distort_mult == pytest.approx(base.data.distort * base.data.distort_mult / 2)
        # decay 6x faster: the factor after k base intervals arrives after k/6 of them
        steps = int(base.schedule.decay_steps)
        assert lr_factor(cfg.schedule)(-(-steps // 6)) == pytest.approx(lr_factor(base.schedule)(steps))
        assert lr_factor(cfg.schedule)(steps // 6 - 1) == 1.0
    assert bn.optim.lr_mult == base.optim.lr_mult == 1
    assert preset("inception_x5").optim.lr_mult == 5 and preset("inception_x5").norm.name == "none"


@pytest.mark.parametrize("name", ["bn_x5_sigmoid", "inception_sigmoid"])
def test_sigmoid_variants_contain_no_relu(preset, name):
    cfg = preset(name, "data=synthetic", "model.width=0.125")
    model = models.build(cfg.model, cfg.norm, (1, 28, 28), 10)
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert any(isinstance(m, nn.Sigmoid) for m in model.modules())


def test_every_preset_trains_three_steps(bnexp, runs_root):
    # model=inception first, so that the sweep's base config already has model.width
    done = bnexp("train", "-m", "model=inception", f"experiment={','.join(PRESETS)}", "data=synthetic",
                 "model.width=0.0625",
                 "data.n_train=256", "data.n_test=64", "trainer.max_steps=3", "trainer.eval_every=3",
                 "trainer.log_every=1", "trainer.progress=false")
    assert done.returncode == 0, done.stderr
    assert len(run_dirs(runs_root)) == len(PRESETS)
    assert [(s["status"], s["steps"]) for s in summaries(runs_root)] == [("completed", 3)] * len(PRESETS)
    losses = [float(row.split(",")[2]) for path in runs_root.rglob("metrics.csv")
              for row in path.read_text().splitlines() if ",train/loss," in row]
    assert len(losses) == 3 * len(PRESETS) and all(0 < loss < 10 for loss in losses)  # finite, near ln 10


def write_cifar_batches(root, n=20):
    """torchvision's on-disk CIFAR-10 layout: pickled batches under cifar-10-batches-py."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        x = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        y = rng.integers(0, 10, n).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"data": x, "labels": y}, f)
        batches[name] = (x, y)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return batches


def test_cifar10_loader_on_its_real_format(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    # Our fixture has other checksums than the real files.
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda path, md5=None: True)
    batches = write_cifar_batches(tmp_path)
    (train_x, train_y), (test_x, test_y) = data.load_cifar10(tmp_path, download=False)
    assert train_x.shape == (100, 3, 32, 32) and test_x.shape == (20, 3, 32, 32)
    assert torch.equal(test_x.reshape(20, -1), torch.from_numpy(batches["test_batch"][0]))
    assert test_y.tolist() == batches["test_batch"][1]


def test_cifar10_missing_is_a_clear_error(tmp_path):
    with pytest.raises(Exception, match="CIFAR-10 could not be read or downloaded"):
        data.load_cifar10(tmp_path, download=False)


def crops(image: torch.Tensor, padding: int) -> list[tuple[int, int, torch.Tensor]]:
    """Every crop of the zero-padded image at the image's size: (dy, dx, crop)."""
    padded = torch.nn.functional.pad(image, (padding,) * 4)
    h, w = image.shape[-2:]
    return [(dy, dx, padded[:, dy:dy + h, dx:dx + w]) for dy in range(2 * padding + 1) for dx in range(2 * padding + 1)]


def test_device_augmentation_is_seeded_and_shape_preserving():
    augment = data.make_augment(4, True, 0.2)
    x = torch.rand(8, 3, 32, 32)
    a = augment(x, torch.Generator().manual_seed(1))
    b = augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, augment(x, torch.Generator().manual_seed(2)))
    # A pure crop: each example is one window of its own zero-padded image, and the windows vary.
    plain = data.make_augment(4, False, 0.0)(x, torch.Generator().manual_seed(3))
    offsets = []
    for i in range(len(x)):
        found = [(dy, dx) for dy, dx, crop in crops(x[i], 4) if torch.equal(plain[i], crop)]
        assert found, f"example {i} is not a crop of its image"
        offsets.append(found[0])
    assert len(set(offsets)) > 1
    # With flips: a crop or its mirror image. With distortion: an affine map of one of those, per example.
    flipped = data.make_augment(4, True, 0.0)(x, torch.Generator().manual_seed(4))
    mirrored = [any(torch.equal(flipped[i], crop.flip(-1)) for _, _, crop in crops(x[i], 4)) for i in range(len(x))]
    assert all(mirrored[i] or any(torch.equal(flipped[i], crop) for _, _, crop in crops(x[i], 4))
               for i in range(len(x)))
    assert 0 < sum(mirrored) < len(x)
    distorted = data.make_augment(0, False, 0.2)(x, torch.Generator().manual_seed(5))
    for i in range(len(x)):
        slope, intercept = torch.linalg.lstsq(torch.stack([x[i].flatten(), torch.ones(x[i].numel())], 1),
                                              distorted[i].flatten()).solution.tolist()
        assert 0.8 <= slope <= 1.2 and slope != pytest.approx(1.0, abs=1e-4)  # contrast within +-0.2
        torch.testing.assert_close(distorted[i], x[i] * slope + intercept, rtol=1e-5, atol=1e-5)


def test_imagefolder_loader_on_real_jpegs(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 3)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.jpg")
    cfg = OmegaConf.create({"name": "imagefolder", "root": str(tmp_path), "size": 32, "min_crop_scale": 0.5,
                            "distort": 0.4, "distort_mult": 1.0, "workers": 0, "mean": [0.5] * 3, "std": [0.25] * 3})
    trainer = OmegaConf.create({"batch_size": 4, "seed": 0, "eval_batch_size": 5})
    source = data.build(cfg, trainer, torch.device("cpu"))
    assert source.num_classes == 2 and source.input_shape == (3, 32, 32)
    x, y = source.next_batch(0)
    assert x.shape == (4, 3, 32, 32) and set(y.tolist()) <= {0, 1}
    assert [len(y) for _, y in source.eval_batches()] == [5, 1]
    assert source.next_batch(3)[0].shape == (4, 3, 32, 32)  # crosses into the next epoch
    # trainer.eval_train: the 12 training images once each, as evaluation transforms them (no random crop)
    first, again = (torch.cat([x for x, _ in source.eval_batches("train")]) for _ in range(2))
    assert first.shape == (12, 3, 32, 32) and torch.equal(first, again)


NORMS = [{"name": "none"}, {"name": "batch", "eps": 1e-5, "momentum": 0.1},
         {"name": "batch_paper", "eps": 1e-5, "momentum": 0.1},
         {"name": "layer", "eps": 1e-5}, {"name": "group", "groups": 2, "eps": 1e-5}, {"name": "instance", "eps": 1e-5}]


# channels_last but with instance norm: torch's instance norm returns NCHW whatever it is given, and at
# 16 px 5b's pooling branch max-pools a 2x2 map with a 3x3 window, a constant map, which an instance
# norm turns into rounding noise whose signs the ReLU follows: another layout's summation order flips them.
@pytest.mark.parametrize("norm_cfg, channels_last", [(n, False) for n in NORMS] +
                         [(n, True) for n in NORMS if n["name"] != "instance"],
                         ids=lambda v: v["name"] if isinstance(v, dict) else ("channels_last" if v else "nchw"))
def test_the_wide_twin_is_its_replicas_side_by_side(norm_cfg, channels_last):
    """models.stacked: R networks as one wide network, computed on their stacked tensors (bnexp/
    stepper.py), gives each replica's logits, gradients and BN statistics as the network alone does,
    in float64 (where a changed order of summation is invisible), with LRN and the small stem's pool.
    Replicas see different images: a window, a group or a concatenation that crossed replicas fails.
    In channels_last, the layout holds through every module (a concatenation that lost it would cost
    a copy per module)."""
    from bnexp.stepper import Stack

    cfg = OmegaConf.create({"name": "inception", "width": 0.0625, "stem": "small", "activation": "relu",
                            "dropout": 0.0, "lrn": True, "stem_pool": True})
    norm_cfg = OmegaConf.create(norm_cfg)
    replicas, shape = 3, (2, 16, 16)
    torch.set_default_dtype(torch.float64)
    try:
        nets = []
        for seed in range(replicas):
            torch.manual_seed(seed)
            nets.append(models.build(cfg, norm_cfg, shape, 5))
        alone = [pickle.loads(pickle.dumps(net)) for net in nets]
        stack = Stack(nets, models.stacked(cfg, norm_cfg, shape, 5, replicas), channels_last)
        layouts = []
        for block in stack.wide.blocks:
            block.register_forward_hook(
                lambda m, i, out: layouts.append(out.is_contiguous(memory_format=torch.channels_last)))
        x, y = torch.randn(replicas, 6, *shape), torch.randint(0, 5, (replicas, 6))
        tilt = torch.randn(replicas, 6, 5)  # a loss that weighs every logit differently
        _, logits = stack.forward(x, y)
        (logits * tilt).sum().backward()
        assert layouts == [channels_last] * len(stack.wide.blocks)
        for r, net in enumerate(alone):
            own = net(x[r])
            (own * tilt[r]).sum().backward()
            torch.testing.assert_close(logits[r], own, rtol=1e-10, atol=1e-10)
            for name, p in net.named_parameters():
                torch.testing.assert_close(stack.params[name].grad[r], p.grad, rtol=1e-9, atol=1e-10, msg=name)
            for name, b in net.named_buffers():  # running statistics and their counters, updated in the stack
                torch.testing.assert_close(stack.buffers[name][r], b, rtol=1e-10, atol=1e-10, msg=name)
            for name, b in nets[r].named_buffers():  # and seen by the replica's own module
                assert b.data_ptr() == stack.buffers[name][r].data_ptr(), name
    finally:
        torch.set_default_dtype(torch.float32)


def test_a_wide_twin_only_for_the_inception_model(compose):
    cfg = compose("data=synthetic")  # the MLP: vmapped replicas
    assert models.stacked(cfg.model, cfg.norm, (1, 28, 28), 10, 2) is None
