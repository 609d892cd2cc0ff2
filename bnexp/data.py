"""Datasets as tensors on the training device, drawn into mini-batches by indexing.

Every dataset is a `BatchSource`. Which examples form batch `step` is a pure function of
(seed, step): a fresh permutation every epoch from a seeded generator. Runs are reproducible and
a resumed run draws the same batches. MNIST's and Fashion-MNIST's fetching and checking live in
bnexp/mnist.py, their shifted test sets (data.shift) in bnexp/shift.py.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import torch
from omegaconf import DictConfig

from bnexp.errors import RunFailed, UserError
from bnexp.mnist import load_fashion_mnist, load_mnist
from bnexp.shift import shifted_test_set


class BatchSource(Protocol):
    """What the trainer draws from: batch `step` of the training set, and the test set in batches."""

    input_shape: tuple[int, ...]  # one example, e.g. (1, 28, 28)
    num_classes: int

    def next_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, labels) of training step `step`, on the training device: the same for the same step."""

    def eval_batches(self, split: str = "test") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The whole test set (or with split="train" the training set, as evaluation transforms it),
        in batches of trainer.eval_batch_size, in a fixed order."""


def input_shape(cfg: DictConfig) -> tuple[int, ...]:
    """The shape of one example of dataset `cfg`, known before loading it (for validation)."""
    return {"mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32),
            "imagefolder": (3, cfg.get("size"), cfg.get("size")), "synthetic": tuple(cfg.get("shape", ()))}[cfg.name]


def seeded(seed: int, n: int, device="cpu") -> torch.Generator:
    """The generator for epoch or step `n` of a run with `seed`: draws are pure functions of (seed, n)."""
    return torch.Generator(device).manual_seed(seed * 1_000_003 + n)


def own_shard(batch: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Process `rank`'s contiguous part of a global batch (the whole batch in a single process)."""
    if world == 1:
        return batch
    size = len(batch) // world
    return batch[rank * size : (rank + 1) * size]


class DeviceData:
    """Train and test tensors kept on one device; batches are drawn by indexing.

    `augment(x, generator)`, if given, transforms each training batch on the device, with a
    generator seeded from (seed, step) so that augmentation too is a pure function of the step.
    """

    def __init__(self, train_x, train_y, test_x, test_y, num_classes, batch_size, seed, eval_batch_size,
                 augment=None, shard=(0, 1)):
        if batch_size > len(train_x):
            raise UserError(
                f"trainer.batch_size={batch_size} exceeds the {len(train_x)} training examples"
            )
        self.train_x, self.train_y, self.test_x, self.test_y = train_x, train_y, test_x, test_y
        self.num_classes = num_classes
        self.input_shape = tuple(train_x.shape[1:])
        self.batch_size, self.seed, self.eval_batch_size = batch_size, seed, eval_batch_size
        self.augment = augment
        self.rank, self.world = shard  # this process's part of every global batch (data-parallel runs)
        self.batches_per_epoch = len(train_x) // batch_size  # the last partial batch is dropped
        self._epoch, self._perm = -1, None

    def next_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, i = divmod(step, self.batches_per_epoch)
        if epoch != self._epoch:
            g = seeded(self.seed, epoch)
            self._perm = torch.randperm(len(self.train_x), generator=g).to(self.train_x.device)
            self._epoch = epoch
        idx = own_shard(self._perm[i * self.batch_size : (i + 1) * self.batch_size], self.rank, self.world)
        x = torch.index_select(self.train_x, 0, idx)  # several times faster than x[idx] on CPU
        if self.augment is not None:
            x = self.augment(x, seeded(self.seed, (step + 7) * self.world + self.rank, x.device))
        return x, torch.index_select(self.train_y, 0, idx)

    def reseeded(self, seed: int) -> DeviceData:
        """The same tensors (not copied), batched and augmented as a run with `seed` would be: the
        data of one replica of a replicated run."""
        other = copy.copy(self)
        other.seed, other._epoch, other._perm = seed, -1, None
        return other

    def eval_batches(self, split: str = "test") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The whole test set, or with split="train" the whole training set (its subset, if one is
        chosen), as it is: unaugmented, in order, every example once."""
        x, y = (self.test_x, self.test_y) if split == "test" else (self.train_x, self.train_y)
        for i in range(0, len(x), self.eval_batch_size):
            yield x[i : i + self.eval_batch_size], y[i : i + self.eval_batch_size]


class FolderData:
    """An ImageNet-style tree (train/<class>/*.jpg, val/<class>/*.jpg), too large for device memory:
    read by DataLoader workers, random-resized-crop + flip (+ colour jitter) for training,
    resize + center crop for evaluation. Each epoch's order comes from a generator seeded by (seed, epoch).
    """

    def __init__(self, cfg: DictConfig, trainer: DictConfig, device: torch.device, shard=(0, 1)):
        from torchvision import datasets as tvd
        from torchvision import transforms as T

        root = Path(cfg.root)
        for split in ("train", "val"):
            if not (root / split).is_dir():
                raise UserError(f"data.root={root} has no {split}/ folder "
                                f"(expected {split}/<class>/<image files>)")
        normalize = T.Normalize(list(cfg.mean), list(cfg.std))
        distort = cfg.distort * cfg.distort_mult
        jitter = [T.ColorJitter(distort, distort, distort)] if distort > 0 else []
        train_tf = T.Compose([T.RandomResizedCrop(cfg.size, scale=(cfg.min_crop_scale, 1.0)),
                              T.RandomHorizontalFlip(), *jitter, T.ToTensor(), normalize])
        eval_tf = T.Compose([T.Resize(round(cfg.size * 256 / 224)), T.CenterCrop(cfg.size), T.ToTensor(), normalize])
        try:
            self.train = tvd.ImageFolder(str(root / "train"), train_tf, loader=load_image)
            self.val = tvd.ImageFolder(str(root / "val"), eval_tf, loader=load_image)
        except (FileNotFoundError, OSError) as e:
            raise UserError(f"cannot read the image folders under {root}: {e}") from None
        if self.train.classes != self.val.classes:
            raise UserError(f"{root}/train and {root}/val have different class folders")
        if trainer.batch_size > len(self.train):
            raise UserError(f"trainer.batch_size={trainer.batch_size} exceeds the "
                            f"{len(self.train)} training images")
        self.num_classes, self.input_shape = len(self.train.classes), (3, cfg.size, cfg.size)
        self.device, self.seed, self.cfg, self.trainer = device, trainer.seed, cfg, trainer
        self.eval_transform, self.train_evaluated = eval_tf, None  # the latter: listed when first asked for
        # Each process reads whole global batches and keeps its part: simple, and the same batches
        # as a single process; costs the workers (world - 1) / world of their decoding.
        self.rank, self.world = shard
        self.batches_per_epoch = len(self.train) // trainer.batch_size
        self._epoch, self._batches = -1, None

    def _loader(self, dataset, batch_size, shuffle, generator=None):
        from torch.utils.data import DataLoader

        return DataLoader(dataset, batch_size, shuffle=shuffle, generator=generator, drop_last=shuffle,
                          num_workers=self.cfg.workers, pin_memory=self.device.type == "cuda",
                          persistent_workers=False)

    def next_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, i = divmod(step, self.batches_per_epoch)
        if epoch != self._epoch:
            self._batches = iter(self._loader(self.train, self.trainer.batch_size, True, seeded(self.seed, epoch)))
            for _ in range(i):  # a run resumed mid-epoch continues where it stopped
                next(self._batches)
            self._epoch = epoch
        with unreadable_images_fail_the_run():
            x, y = (own_shard(t, self.rank, self.world) for t in next(self._batches))
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def eval_batches(self, split: str = "test") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if split == "train" and self.train_evaluated is None:  # trainer.eval_train: the training images, as evaluated
            from torchvision import datasets as tvd

            self.train_evaluated = tvd.ImageFolder(self.train.root, self.eval_transform, loader=load_image)
        dataset = self.val if split == "test" else self.train_evaluated
        with unreadable_images_fail_the_run():
            for x, y in self._loader(dataset, self.trainer.eval_batch_size, False):
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


class UnreadableImage(Exception):
    """An image file of data=imagefolder that PIL cannot decode (truncated, not an image, ...)."""


def load_image(path: str):
    """torchvision's PIL loader, with the file named when it fails. Not skipped: a run that silently
    left out examples would not be comparable with one that did not; fix or remove the file, then
    resume the run (its checkpoint is written where it stopped)."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, ValueError, SyntaxError) as e:  # PIL's kinds for truncated and foreign files
        raise UnreadableImage(f"cannot read image {path} ({type(e).__name__}: {e})") from None


@contextlib.contextmanager
def unreadable_images_fail_the_run():
    """UnreadableImage, raised in a DataLoader worker, arrives here wrapped in the worker's traceback:
    the run fails with its one line."""
    try:
        yield
    except UnreadableImage as e:
        last = (str(e).strip().splitlines() or [""])[-1]
        raise RunFailed(last.split("UnreadableImage: ", 1)[-1]) from None


def build(cfg: DictConfig, trainer: DictConfig, device: torch.device, shard=(0, 1)) -> BatchSource:
    """The batch source named by cfg.name, on `device`; `shard` = (rank, world) in data-parallel runs."""
    if cfg.name == "imagefolder":
        return FolderData(cfg, trainer, device, shard)
    distort = cfg.distort * cfg.distort_mult
    augment = make_augment(0, False, distort) if distort > 0 else None
    if cfg.name in ("mnist", "fashion_mnist"):
        load = load_mnist if cfg.name == "mnist" else load_fashion_mnist
        (train_x, train_y), (test_x, test_y) = load(Path(cfg.root), download=cfg.download)
        if cfg.shift is not None:  # the test set alone: training never sees a corruption
            test_x = shifted_test_set(test_x, cfg.name, Path(cfg.root), cfg.shift, cfg.shift_severity)
        num_classes = 10
    elif cfg.name == "cifar10":
        (train_x, train_y), (test_x, test_y) = load_cifar10(Path(cfg.root), download=cfg.download)
        num_classes = 10
        augment = make_augment(cfg.crop_padding, cfg.flip, distort)
    elif cfg.name == "synthetic":
        (train_x, train_y), (test_x, test_y) = make_synthetic(cfg)
        num_classes = cfg.num_classes
    else:
        raise UserError(f"unknown data.name {cfg.name!r}")
    if cfg.train_subset is not None:
        train_x, train_y = subset(train_x, train_y, cfg.train_subset, cfg.subset_seed)
    # mean and std: one number, or one per channel.
    mean = torch.tensor(cfg.mean, dtype=torch.float32).reshape(-1, 1, 1)
    std = torch.tensor(cfg.std, dtype=torch.float32).reshape(-1, 1, 1)

    def prepare(images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            images = images.float().div_(255)
        if images.dim() == 3:  # N x H x W -> N x 1 x H x W
            images = images.unsqueeze(1)
        return images.sub_(mean).div_(std).to(device)

    return DeviceData(
        prepare(train_x), train_y.long().to(device), prepare(test_x), test_y.long().to(device),
        num_classes=num_classes, batch_size=trainer.batch_size, seed=trainer.seed,
        eval_batch_size=trainer.eval_batch_size, augment=augment, shard=shard,
    )


def blank(cfg: DictConfig) -> torch.Tensor:
    """A pixel of intensity 0 (the digits' and garments' empty background) as the data normalize
    it: one value per channel."""
    mean, std = (torch.tensor(v, dtype=torch.float32).flatten() for v in (cfg.mean, cfg.std))
    return -mean / std


def subset(x: torch.Tensor, y: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n training examples chosen at random by `seed` alone (the same for every run), in their order."""
    if n > len(x):
        raise UserError(f"data.train_subset={n} exceeds the {len(x)} training examples")
    chosen = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return x[chosen], y[chosen]


def make_augment(padding: int, flip: bool, distort: float):
    """Random crop (zero padding), horizontal flip and contrast/brightness jitter, batched on the device."""

    def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        dev = x.device
        if padding:
            padded = torch.nn.functional.pad(x, (padding,) * 4)
            dy, dx = (torch.randint(0, 2 * padding + 1, (n, 1), generator=g, device=dev) for _ in range(2))
            rows = (dy + torch.arange(h, device=dev))[:, None, :, None]
            cols = (dx + torch.arange(w, device=dev))[:, None, None, :]
            examples = torch.arange(n, device=dev)[:, None, None, None]
            channels = torch.arange(c, device=dev)[None, :, None, None]
            x = padded[examples, channels, rows, cols]
        if flip:
            x = torch.where(torch.rand(n, 1, 1, 1, generator=g, device=dev) < 0.5, x.flip(3), x)
        if distort > 0:  # the paper's "photometric distortions", with a strength knob
            contrast = 1 + distort * (2 * torch.rand(n, 1, 1, 1, generator=g, device=dev) - 1)
            brightness = distort * (2 * torch.rand(n, 1, 1, 1, generator=g, device=dev) - 1)
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * contrast + mean + brightness
        return x

    return augment


def load_cifar10(root: Path, download: bool = True):
    """CIFAR-10 as uint8 N x 3 x 32 x 32 tensors through torchvision (downloaded where there is internet)."""
    from torchvision.datasets import CIFAR10

    splits = []
    for train in (True, False):
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                ds = CIFAR10(str(root), train=train, download=download)
        except Exception as e:
            reason = (str(e).strip().splitlines() or [""])[0]
            raise UserError(
                f"CIFAR-10 could not be read or downloaded under {root} ({type(e).__name__}: {reason}); "
                "put torchvision's cifar-10-batches-py folder there"
            ) from None
        splits.append((torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)))
    return splits[0], splits[1]


def make_synthetic(cfg: DictConfig):
    """Class prototypes plus noise: learnable in a few hundred steps, identical for every run."""
    g = torch.Generator().manual_seed(cfg.seed)
    prototypes = torch.randn(cfg.num_classes, *cfg.shape, generator=g)

    def split(n):
        y = torch.randint(cfg.num_classes, (n,), generator=g)
        return prototypes[y] + cfg.noise * torch.randn(n, *cfg.shape, generator=g), y

    return split(cfg.n_train), split(cfg.n_test)
