"""Shifted test sets: MNIST-C's corruptions (Mu & Gilmer 2019) rebuilt with torch alone.

A corruption is a pure function of (images, severity, seed): `corrupt(images, name, severity)`
takes a test set of 28x28 grey uint8 images and returns it corrupted, drawing its randomness
from a generator seeded by the corruption's name and severity alone, so that every machine and
every run sees the same shifted set. Severities 1-5 follow the tables of MNIST-C's (and
ImageNet-C's) code; severity None is the default of MNIST-C's code, which for its 15 is the level
of its published set. Four corruptions have a single form (no severity): stripe, inverse,
dotted_line, zigzag.

MNIST-C has 15: all are here but canny_edges (it needs a Canny edge detector, which torch and
torchvision lack). Beside them: gaussian_noise, gaussian_blur, contrast and inverse, from MNIST-C's
wider list. Where MNIST-C calls an image library the operation is written out:
- skimage's gaussian (mode "nearest", truncate 4): a separable Gaussian filter with edge padding;
- skimage's warp (bilinear, 0 outside): grid_sample with pixel centres at whole coordinates;
- ImageMagick's motion blur (radius r, sigma s): a one-sided line of 2r+1 taps weighted
  exp(-i^2 / 2s^2), pointing at a random angle in [-45, 45] degrees, each tap at its rounded offset;
- the fog's plasma fractal (diamond-square on 256x256, cropped to 28x28), batched.

`shifted_test_set` caches each result under <data.root>/shifted/<dataset>/ with the SHA-256 of its
images and of the clean test set it was made from, checked on every load: a damaged or stale file
is made again, never used.
"""

from __future__ import annotations

import hashlib
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from bnexp.errors import UserError

log = logging.getLogger(__name__)

# Changing how any corruption is made changes this, so that caches made before are made again.
VERSION = 1
SIZE = 28


@dataclass(frozen=True)
class Corruption:
    apply: Callable  # (x: float [N, 28, 28] in [0, 1], parameter, generator) -> the same, corrupted
    levels: tuple = ()  # the parameter at severities 1-5; () for a corruption with one form
    default: int | None = None  # the severity of MNIST-C's code (None: no levels)
    family: str = ""  # noise, blur, photometric (low-order pixel statistics), geometric, overlay


def corrupt(images: torch.Tensor, name: str, severity: int | None = None) -> torch.Tensor:
    """uint8 images [N, 28, 28] -> the same images under corruption `name` at `severity` (uint8)."""
    corruption = lookup(name)
    level = severity_of(name, severity)
    g = torch.Generator().manual_seed(zlib.crc32(f"{name}/{level}".encode()))
    x = images.to(torch.float64) / 255
    x = corruption.apply(x, corruption.levels[level - 1] if level else None, g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def lookup(name: str) -> Corruption:
    if name not in CORRUPTIONS:
        raise UserError(f"unknown corruption {name!r}: choose one of {', '.join(CORRUPTIONS)}")
    return CORRUPTIONS[name]


def severity_of(name: str, severity: int | None) -> int | None:
    """The level used: `severity` (1-5), or MNIST-C's default where None; None for a one-form corruption."""
    corruption = lookup(name)
    if not corruption.levels:
        if severity is not None:
            raise UserError(f"corruption {name} has one form, no severities: leave data.shift_severity null")
        return None
    if severity is None:
        return corruption.default
    if not (isinstance(severity, int) and 1 <= severity <= len(corruption.levels)):
        raise UserError(f"data.shift_severity must be 1-{len(corruption.levels)} or null, got {severity!r}")
    return severity


def shifted_test_set(test_x: torch.Tensor, dataset: str, root: Path, name: str,
                     severity: int | None = None) -> torch.Tensor:
    """The test set under a corruption, from the cache when its checksums hold, else made and cached."""
    level = severity_of(name, severity)
    path = Path(root) / "shifted" / dataset / f"{name}{f'-{level}' if level else ''}.pt"
    source = sha256(test_x)
    if path.exists():
        try:
            cached = torch.load(path, weights_only=True)
            intact = sha256(cached["images"]) == cached["sha256"]
            if intact and (cached["version"], cached["source"]) == (VERSION, source):
                return cached["images"]
            why = "made from another test set or version" if intact else "its checksum does not match"
        except Exception as e:  # a truncated or foreign file
            why = f"unreadable ({type(e).__name__})"
        log.warning("shifted test set %s: %s; making it again", path, why)
    images = corrupt(test_x, name, severity)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"images": images, "sha256": sha256(images), "source": source, "version": VERSION}, tmp)
    tmp.replace(path)  # a reader never sees half a file
    return images


def sha256(images: torch.Tensor) -> str:
    return hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()


# --- the operations MNIST-C borrows from image libraries ------------------------------------

def gaussian_filter(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """skimage.filters.gaussian(x, sigma) of each image: separable, truncated at 4 sigma, edge padding."""
    radius = int(4 * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-t**2 / (2 * sigma**2))
    k = k / k.sum()
    y = F.pad(x.unsqueeze(1), (radius, radius, radius, radius), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    y = F.conv2d(y, k.view(1, 1, -1, 1))
    return y.squeeze(1)


def warp(x: torch.Tensor, matrix: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
    """skimage's warp(x, inverse_map=affine) about the image centre: output pixel p (x, y) samples the
    input at matrix @ (p - c) + c + shift, bilinearly, 0 outside. matrix [N, 2, 2], shift [N, 2]."""
    n, centre = len(x), (SIZE - 1) / 2
    coords = torch.stack(torch.meshgrid(torch.arange(SIZE, dtype=x.dtype), torch.arange(SIZE, dtype=x.dtype),
                                        indexing="xy"), -1).reshape(-1, 2)  # (x, y) of each output pixel
    source = (coords - centre) @ matrix.transpose(1, 2) + centre
    if shift is not None:
        source = source + shift.unsqueeze(1)
    grid = (source / (SIZE - 1) * 2 - 1).reshape(n, SIZE, SIZE, 2)
    return F.grid_sample(x.unsqueeze(1), grid, mode="bilinear", padding_mode="zeros", align_corners=True).squeeze(1)


def random_signs(n: int, g: torch.Generator, *shape) -> torch.Tensor:
    return torch.randint(0, 2, (n, *shape), generator=g).to(torch.float64) * 2 - 1


def shifted(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, pad: int) -> torch.Tensor:
    """Each image n read at (x + dx[n], y + dy[n]) (whole offsets, at most `pad`), edge pixels beyond."""
    n = len(x)
    padded = F.pad(x.unsqueeze(1), (pad, pad, pad, pad), mode="replicate").reshape(n, -1)
    width = SIZE + 2 * pad
    rows = torch.arange(SIZE).view(1, SIZE, 1) + pad + dy.view(n, 1, 1)
    cols = torch.arange(SIZE).view(1, 1, SIZE) + pad + dx.view(n, 1, 1)
    return padded.gather(1, (rows * width + cols).reshape(n, -1)).reshape(n, SIZE, SIZE)


def plasma_fractal(n: int, decay: float, g: torch.Generator, mapsize: int = 256) -> torch.Tensor:
    """n height maps of mapsize^2 in [0, 1] by diamond-square (MNIST-C's plasma_fractal, batched)."""
    maps = torch.zeros(n, mapsize, mapsize, dtype=torch.float64)
    step, wibble = mapsize, 100.0

    def wibbled_mean(total):
        return total / 4 + wibble * (torch.rand(total.shape, generator=g, dtype=torch.float64) * 2 - 1) * wibble

    while step >= 2:
        half = step // 2
        corners = maps[:, 0::step, 0::step]  # squares: each centre from its four corners
        total = corners + corners.roll(-1, 1)
        total = total + total.roll(-1, 2)
        maps[:, half::step, half::step] = wibbled_mean(total)
        centres, corners = maps[:, half::step, half::step], maps[:, 0::step, 0::step]  # diamonds
        left = centres + centres.roll(1, 1) + corners + corners.roll(-1, 2)
        maps[:, 0::step, half::step] = wibbled_mean(left)
        top = centres + centres.roll(1, 2) + corners + corners.roll(-1, 1)
        maps[:, half::step, 0::step] = wibbled_mean(top)
        step, wibble = half, wibble / decay
    maps = maps - maps.amin((1, 2), keepdim=True)
    return maps / maps.amax((1, 2), keepdim=True)


def line(c0, r0, c1, r1) -> torch.Tensor:
    """MNIST-C's line_from_points for each image: a stroke from column c0 (row r0) to c1 (row r1),
    bright on the line and fading to 0 at 2.3 rows from it, 0 left of floor(c0) and from ceil(c1)."""
    c0, r0, c1, r1 = (torch.as_tensor(v, dtype=torch.float64).view(-1, 1, 1) for v in (c0, r0, c1, r1))
    cols = torch.arange(SIZE, dtype=torch.float64).view(1, 1, SIZE)
    rows = torch.arange(SIZE, dtype=torch.float64).view(1, SIZE, 1)
    vertical = c1 == c0
    slope = (r1 - r0) / torch.where(vertical, 1.0, c1 - c0)
    dist = (rows - (slope * (cols - c0) + r0)).abs().clamp(0, 2.3 - 1e-10)
    stroke = (torch.log(1 - dist / 2.3) + 1).clamp(0, 1)
    inside = (cols >= c0.floor()) & (cols < c1.ceil())
    return torch.where(inside & ~vertical, stroke, 0.0)


# --- the corruptions (MNIST-C's corruptions.py, parameter tables as there) -----------------

def gaussian_noise(x, scale, g):
    return x + torch.randn(x.shape, generator=g, dtype=x.dtype) * scale


def shot_noise(x, photons, g):
    return torch.poisson(x * photons, generator=g) / photons


def impulse_noise(x, amount, g):  # skimage's "s&p": a share `amount` of pixels set to 0 or 1, even odds
    flipped = torch.rand(x.shape, generator=g) <= amount
    salt = torch.rand(x.shape, generator=g) <= 0.5
    return torch.where(flipped, salt.to(x.dtype), x)


def gaussian_blur(x, sigma, g):
    return gaussian_filter(x, sigma)


def glass_blur(x, level, g):
    """Blur, then swap each pixel (bottom right to top left, each with probability 1/2) with one at
    most `delta` away, `iterations` times, then blur again."""
    sigma, delta, iterations = level
    x = (gaussian_filter(x, sigma) * 255).floor()  # np.uint8 truncates
    n = torch.arange(len(x))
    for _ in range(iterations):
        for h in range(SIZE - delta, delta, -1):
            for w in range(SIZE - delta, delta, -1):
                swap = torch.rand(len(x), generator=g) < 0.5
                dx, dy = torch.randint(-delta, delta, (2, len(x)), generator=g)
                k, hp, wp = n[swap], h + dy[swap], w + dx[swap]
                here, there = x[k, h, w].clone(), x[k, hp, wp].clone()
                x[k, h, w], x[k, hp, wp] = there, here
    return gaussian_filter(x / 255, sigma)


def motion_blur(x, level, g):
    radius, sigma = level
    taps = torch.arange(2 * radius + 1, dtype=x.dtype)
    weights = torch.exp(-taps**2 / (2 * sigma**2))
    weights = weights / weights.sum()
    angle = torch.deg2rad(torch.rand(len(x), generator=g, dtype=x.dtype) * 90 - 45)
    out = torch.zeros_like(x)
    for i, weight in zip(taps, weights, strict=True):
        dx, dy = torch.ceil(i * angle.cos() - 0.5).long(), torch.ceil(i * angle.sin() - 0.5).long()
        out += weight * shifted(x, dx, dy, len(taps))
    return out


def shear(x, amount, g):
    s = random_signs(len(x), g) * amount
    matrix = torch.stack([torch.stack([torch.ones_like(s), -s.sin()], -1),
                          torch.stack([torch.zeros_like(s), s.cos()], -1)], 1)
    return warp(x, matrix)


def rotate(x, radians, g):
    a = random_signs(len(x), g) * radians
    matrix = torch.stack([torch.stack([a.cos(), -a.sin()], -1), torch.stack([a.sin(), a.cos()], -1)], 1)
    return warp(x, matrix)


def scale(x, factor, g):  # the input read at `factor` x the distance from the centre: a smaller digit
    return warp(x, torch.eye(2, dtype=x.dtype).expand(len(x), 2, 2) * factor)


def translate(x, pixels, g):
    return warp(x, torch.eye(2, dtype=x.dtype).expand(len(x), 2, 2), random_signs(len(x), g, 2) * pixels)


def brightness(x, amount, g):  # HSV value + amount: for a grey image, the grey level + amount
    return x + amount


def contrast(x, factor, g):
    mean = x.mean((1, 2), keepdim=True)
    return (x - mean) * factor + mean


def fog(x, level, g):
    strength, decay = level
    top = x.amax((1, 2), keepdim=True)
    field = torch.cat([plasma_fractal(len(chunk), decay, g)[:, :SIZE, :SIZE] for chunk in x.split(256)])
    return ((x + strength * field) * top / (top + strength)).clamp(0, 1)


def spatter(x, level, g):
    loc, spread, sigma, threshold, sigma_mud, _ = level
    liquid = gaussian_filter(loc + spread * torch.randn(x.shape, generator=g, dtype=x.dtype), sigma)
    liquid = torch.where(liquid < threshold, 0.0, liquid)
    mud = gaussian_filter((liquid > threshold).to(x.dtype), sigma_mud)
    mud = torch.where(mud < 0.8, 0.0, mud)
    return x * (1 - mud) + 63 / 255 * mud


def stripe(x, _, g):  # the 7 columns at each side inverted
    x = x.clone()
    x[:, :, :7], x[:, :, 21:] = 1 - x[:, :, :7], 1 - x[:, :, 21:]
    return x


def inverse(x, _, g):
    return 1 - x


def dotted_line(x, _, g):
    r0, r1 = torch.randint(0, SIZE - 1, (2, len(x)), generator=g)
    stroke = line(0, r0, SIZE - 1, r1)
    stroke[:, :, (torch.arange(SIZE) // 2) % 2 == 0] = 0  # 2-pixel dashes: columns 0-1 off, 2-3 on, ...
    return x + stroke


def zigzag(x, _, g):
    """A zigzag of 2-pixel teeth from column 2 to 25 along a line rising or falling by at most 5 rows."""
    a = b = 2.0
    c0, c1 = 2, 25
    r0 = torch.randint(0, SIZE - 1, (len(x),), generator=g).to(torch.float64)
    r1 = r0 + torch.randint(-5, 5, (len(x),), generator=g)
    theta = torch.atan((r1 - r0) / (c1 - c0))
    length = (c1 - c0) / theta.cos()
    teeth = int((float(length.min()) - a) // (2 * a)) + 1  # 6 for every slope that can be drawn
    assert teeth == int((float(length.max()) - a) // (2 * a)) + 1
    points = [(torch.zeros_like(r0), torch.zeros_like(r0))]
    points += [(torch.full_like(r0, (2 * i + 1) * a), torch.full_like(r0, (-1) ** i * b)) for i in range(teeth)]
    end = (2 * a) * torch.floor(length / (2 * a))
    points.append((length, (-1) ** (teeth - 1) * b / (2 * (length - end))))  # as MNIST-C ends it
    cols = [c * theta.cos() - r * theta.sin() + c0 for c, r in points]
    rows = [c * theta.sin() + r * theta.cos() + r0 for c, r in points]
    for i in range(1, len(points)):
        x = (x + line(cols[i - 1], rows[i - 1], cols[i], rows[i])).clamp(0, 1)
    return x


CORRUPTIONS = {
    "shot_noise": Corruption(shot_noise, (60, 25, 12, 5, 3), 5, "noise"),
    "impulse_noise": Corruption(impulse_noise, (0.03, 0.06, 0.09, 0.17, 0.27), 4, "noise"),
    "gaussian_noise": Corruption(gaussian_noise, (0.08, 0.12, 0.18, 0.26, 0.38), 5, "noise"),
    "glass_blur": Corruption(glass_blur, ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)), 1, "blur"),
    "motion_blur": Corruption(motion_blur, ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)), 1, "blur"),
    "gaussian_blur": Corruption(gaussian_blur, (1, 2, 3, 4, 6), 2, "blur"),
    "brightness": Corruption(brightness, (0.1, 0.2, 0.3, 0.4, 0.5), 5, "photometric"),
    "contrast": Corruption(contrast, (0.4, 0.3, 0.2, 0.1, 0.05), 4, "photometric"),
    "fog": Corruption(fog, ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)), 5, "photometric"),
    "stripe": Corruption(stripe, family="photometric"),
    "inverse": Corruption(inverse, family="photometric"),
    "shear": Corruption(shear, (0.2, 0.4, 0.6, 0.8, 1.0), 2, "geometric"),
    "rotate": Corruption(rotate, (0.2, 0.4, 0.6, 0.8, 1.0), 2, "geometric"),
    "scale": Corruption(scale, tuple(1 / s for s in (0.9, 0.8, 0.7, 0.6, 0.5)), 3, "geometric"),
    "translate": Corruption(translate, (1, 2, 3, 4, 5), 3, "geometric"),
    "spatter": Corruption(spatter, ((0.65, 0.3, 4, 0.69, 0.6, 0), (0.65, 0.3, 3, 0.68, 0.6, 0),
                                    (0.65, 0.3, 2, 0.68, 0.5, 0), (0.65, 0.3, 1, 0.65, 1.5, 1),
                                    (0.67, 0.4, 1, 0.65, 1.5, 1)), 4, "overlay"),
    "dotted_line": Corruption(dotted_line, family="overlay"),
    "zigzag": Corruption(zigzag, family="overlay"),
}
