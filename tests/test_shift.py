"""Shifted test sets (bnexp/shift.py): each corruption does what MNIST-C defines, the same every
time, and the cache refuses a file whose checksums do not hold."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from scipy import ndimage

from bnexp import data, shift
from bnexp.errors import UserError


def digits(n: int = 64, seed: int = 0) -> torch.Tensor:
    """n uint8 28x28 images like MNIST's: a bright blob on a 0 background, 0 in 5 pixels from the border."""
    g = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    centre = 12 + 4 * torch.rand(n, 2, 1, 1, generator=g)
    blob = torch.exp(-((rows - centre[:, 0]) ** 2 / 5 + (cols - centre[:, 1]) ** 2 / 3))
    images = (blob * 255).round().to(torch.uint8)
    assert not images[:, :5].any() and not images[:, -5:].any() and not images[:, :, :5].any()
    return images


def bar() -> torch.Tensor:
    """A horizontal bar through the centre (13.5, 13.5), 16 pixels long and 2 high."""
    x = torch.zeros(1, 28, 28, dtype=torch.uint8)
    x[0, 13:15, 6:22] = 255
    return x


def orientation(image: torch.Tensor) -> float:
    """The angle (radians, x to the right and y down) of an image's principal axis."""
    rows, cols = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    w = image.double() / image.double().sum()
    my, mx = (w * rows).sum(), (w * cols).sum()
    cxx, cyy, cxy = (w * (cols - mx) ** 2).sum(), (w * (rows - my) ** 2).sum(), (w * (cols - mx) * (rows - my)).sum()
    return 0.5 * math.atan2(2 * cxy, cxx - cyy)


@pytest.mark.parametrize("name", list(shift.CORRUPTIONS))
def test_every_corruption_is_the_same_every_time_and_changes_the_images(name):
    x = digits()
    once, again = shift.corrupt(x, name), shift.corrupt(x.clone(), name)
    assert once.dtype == torch.uint8 and once.shape == x.shape
    assert torch.equal(once, again)
    assert (once != x).any()
    if shift.CORRUPTIONS[name].levels:  # a severity is a real change of strength
        assert not torch.equal(shift.corrupt(x, name, 1), shift.corrupt(x, name, 5))


def test_photometric_corruptions_follow_their_formulas():
    x = digits()
    f = x.double()
    assert torch.equal(shift.corrupt(x, "brightness", 5), ((f / 255 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8))
    assert torch.equal(shift.corrupt(x, "inverse"), 255 - x)
    striped = shift.corrupt(x, "stripe")
    assert torch.equal(striped[:, :, 7:21], x[:, :, 7:21])
    assert torch.equal(striped[:, :, :7], 255 - x[:, :, :7]) and torch.equal(striped[:, :, 21:], 255 - x[:, :, 21:])
    low = shift.corrupt(x, "contrast", 5).double()  # 0.05 x the distance from each image's mean
    mean = f.mean((1, 2), keepdim=True)
    assert (low - ((f - mean) * 0.05 + mean)).abs().max() <= 0.5 + 1e-9


def test_noises_have_their_strength():
    x = torch.full((200, 28, 28), 128, dtype=torch.uint8)
    gaussian = shift.corrupt(x, "gaussian_noise", 1).double() - 128  # 0.08 x 255: clipped at 6 sd
    assert abs(gaussian.std() / 255 - 0.08) < 0.002
    photons = 60  # shot noise at severity 1: Poisson(x * 60) / 60, whose variance is x / 60
    shot = shift.corrupt(x, "shot_noise", 1).double() / 255
    assert abs(shot.mean() - 128 / 255) < 0.002 and abs(shot.var() / ((128 / 255) / photons) - 1) < 0.03
    impulse = shift.corrupt(x, "impulse_noise", 5)  # 27% of pixels set to 0 or 255, half each
    hit = impulse != 128
    assert abs(hit.double().mean() - 0.27) < 0.01
    assert set(impulse[hit].unique().tolist()) == {0, 255}
    assert abs((impulse[hit] == 255).double().mean() - 0.5) < 0.02


def test_blur_is_skimages_gaussian():
    x = digits(4)
    for sigma in (1, 2, 6):
        ours = shift.gaussian_filter(x.double() / 255, sigma)
        reference = torch.from_numpy(ndimage.gaussian_filter(x.double().numpy() / 255, (0, sigma, sigma),
                                                             mode="nearest", truncate=4.0))
        assert torch.allclose(ours, reference, atol=1e-12)


def test_glass_blur_moves_pixels_only_locally():
    x = digits()
    out = shift.corrupt(x, "glass_blur", 1).double()
    assert abs(out.sum() / x.double().sum() - 1) < 0.02  # swaps keep the ink; the blurs keep it too


def test_motion_blur_draws_a_point_into_a_line_of_its_taps():
    point = torch.zeros(50, 28, 28, dtype=torch.uint8)
    point[:, 14, 14] = 255
    radius, sigma = shift.CORRUPTIONS["motion_blur"].levels[0]
    out = shift.motion_blur(point.double() / 255, (radius, sigma), torch.Generator().manual_seed(0))
    assert torch.allclose(out.sum((1, 2)), torch.ones(50, dtype=torch.float64))  # the weights sum to 1
    first = 1 / torch.exp(-torch.arange(2 * radius + 1.0) ** 2 / (2 * sigma**2)).sum()
    for image in out:  # the trail goes back from the point, at -45 to 45 degrees from the x axis
        ys, xs = torch.nonzero(image > 1e-6, as_tuple=True)
        assert (xs <= 14).all() and ((14 - xs) >= (ys - 14).abs()).all()
        assert image[14, 14] >= first - 1e-9  # the first tap (taps on a diagonal can share a pixel)


def test_geometric_corruptions_move_the_ink_as_defined():
    x = digits()
    # translate by +-3 pixels on each axis: each image is the original moved by whole pixels
    moved = shift.corrupt(x, "translate", 3)
    for a, b in zip(x, moved, strict=True):
        assert any(torch.equal(torch.roll(a, (dy, dx), (0, 1)), b) for dy in (-3, 3) for dx in (-3, 3))
    # scale 1/0.7: the ink's area, and so its sum, shrinks by 0.7^2
    ratio = shift.corrupt(x, "scale", 3).double().sum() / x.double().sum()
    assert abs(ratio - 0.7**2) < 0.02
    # shear 0.4: the determinant of the sampling map is cos(0.4): the ink grows by 1 / cos(0.4)
    ratio = shift.corrupt(x, "shear", 2).double().sum() / x.double().sum()
    assert abs(ratio - 1 / math.cos(0.4)) < 0.03
    # rotate 0.4 rad either way: a horizontal bar ends at +-0.4 rad, about its centre
    angles = {round(orientation(shift.rotate(bar().double().expand(8, 28, 28) / 255, 0.4,
                                             torch.Generator().manual_seed(s))[0]), 2) for s in range(8)}
    assert angles == {-0.4, 0.4}


def test_fog_adds_a_fractal_field_and_overlays_only_add_ink():
    maps = shift.plasma_fractal(3, 2.0, torch.Generator().manual_seed(0))
    assert maps.shape == (3, 256, 256) and torch.allclose(maps.amin((1, 2)), torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(maps.amax((1, 2)), torch.ones(3, dtype=torch.float64))
    x = digits()
    fogged = shift.corrupt(x, "fog").double()  # fog 3.0 over the ink, scaled back to the ink's maximum
    assert (fogged[x == 0] > 0).any() and fogged.mean() > x.double().mean()
    for name in ("dotted_line", "zigzag"):
        out = shift.corrupt(x, name)
        assert (out >= x).all() and (out > x).any()
    dotted = shift.corrupt(x, "dotted_line")
    assert torch.equal(dotted[:, :, 0:2], x[:, :, 0:2]) and torch.equal(dotted[:, :, 4:6], x[:, :, 4:6])


def test_severity_and_names_are_checked():
    with pytest.raises(UserError, match="unknown corruption 'foggy': choose one of shot_noise"):
        shift.corrupt(digits(), "foggy")
    with pytest.raises(UserError, match="1-5 or null"):
        shift.severity_of("fog", 6)
    with pytest.raises(UserError, match="one form"):
        shift.severity_of("stripe", 2)
    assert shift.severity_of("shot_noise", None) == 5 and shift.severity_of("glass_blur", None) == 1


def test_the_cache_is_used_only_while_its_checksums_hold(tmp_path, caplog):
    x = digits()
    made = shift.shifted_test_set(x, "mnist", tmp_path, "shot_noise", 2)
    path = tmp_path / "shifted" / "mnist" / "shot_noise-2.pt"
    assert path.exists() and torch.equal(made, shift.corrupt(x, "shot_noise", 2))
    cached = torch.load(path, weights_only=True)
    cached["images"][0, 0, 0] += 1  # a damaged file
    torch.save(cached, path)
    with caplog.at_level(logging.WARNING):
        again = shift.shifted_test_set(x, "mnist", tmp_path, "shot_noise", 2)
    assert torch.equal(again, made) and "checksum does not match" in caplog.text
    caplog.clear()
    other = digits(seed=1)  # another test set under the same name: made again from it
    with caplog.at_level(logging.WARNING):
        assert torch.equal(shift.shifted_test_set(other, "mnist", tmp_path, "shot_noise", 2),
                           shift.corrupt(other, "shot_noise", 2))
    assert "another test set" in caplog.text
    path.write_bytes(b"not a tensor")
    assert torch.equal(shift.shifted_test_set(other, "mnist", tmp_path, "shot_noise", 2),
                       shift.corrupt(other, "shot_noise", 2))


def test_the_shift_reaches_the_test_set_alone(compose, monkeypatch, tmp_path):
    train, test = digits(100, seed=2), digits(50, seed=3)
    labels = torch.arange(10).repeat(10)
    monkeypatch.setattr(data, "load_mnist", lambda root, download: ((train, labels), (test, labels[:50])))
    cfg = compose("data=mnist", f"data.root={tmp_path}", "data.shift=inverse", "trainer.batch_size=10")
    source = data.build(cfg.data, cfg.trainer, torch.device("cpu"))
    assert torch.equal(source.train_x, train.unsqueeze(1).double().div(255).float())
    assert torch.equal(source.test_x, (255 - test).unsqueeze(1).double().div(255).float())


@pytest.mark.parametrize("overrides, says", [
    (["data.shift=foggy"], "unknown corruption 'foggy'"),
    (["data.shift=fog", "data.shift_severity=7"], "data.shift_severity must be 1-5 or null, got 7"),
    (["data.shift=stripe", "data.shift_severity=2"], "stripe has one form"),
    (["data.shift_severity=3"], "needs a corruption: set data.shift"),
])
def test_bad_shift_settings_are_refused_before_any_data_is_loaded(bnexp, overrides, says):
    done = bnexp("train", *overrides, "trainer.max_steps=1")
    assert done.returncode != 0 and says in done.stderr
