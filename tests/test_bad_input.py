"""Bad input: a non-zero exit, one clear message, no traceback, and no summary claiming success."""

import pytest

from conftest import FAST, summaries


def assert_refused(done, runs_root, message):
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not any(s["status"] == "completed" for s in summaries(runs_root))


@pytest.mark.parametrize("override, message", [
    ("trainer.nope=1", "Could not override 'trainer.nope'"),
    ("optim.lr=0", "optim.lr must be > 0, got 0"),
    ("optim.lr=-0.1", "optim.lr must be > 0"),
    ("trainer.batch_size=1", "norm=batch needs more than one example per batch (trainer.batch_size=1"),
    ("trainer.max_steps=0", "trainer.max_steps must be > 0"),
    ("trainer.max_steps=-5", "trainer.max_steps must be > 0"),
    ("trainer.device=tpu", "trainer.device must be one of"),
    ("norm=groupish", "Could not find 'norm/groupish'"),
    ("hydra/launcher=slurmish", "Could not find 'hydra/launcher/slurmish'"),
    ("trainer.checkpoint_every=75", "trainer.checkpoint_every must be a multiple of trainer.log_every (50)"),
    ("trainer.resume=maybe", "trainer.resume must be auto or never"),
    ("norm=group norm.sync=true", "Could not override 'norm.sync'"),
])
def test_bad_config_is_refused(bnexp, runs_root, override, message):
    assert_refused(bnexp("train", *FAST, *override.split()), runs_root, message)


def test_batch_size_one_is_fine_without_bn(bnexp, runs_root):
    assert bnexp("train", *FAST, "norm=none", "trainer.batch_size=1").returncode == 0


def test_unwritable_output_dir_is_refused(bnexp, runs_root, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    for args in (["train"], ["train", "-m"]):
        done = bnexp(*args, *FAST, f"runs_root={blocker}/runs")
        assert_refused(done, runs_root, f"output directory {blocker}/runs")
        assert blocker.read_text() == "not a directory"


def test_corrupt_data_file_is_refused(bnexp, runs_root, tmp_path):
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"\x00\x00\x08\x03garbage")
    done = bnexp("train", "data=mnist", "trainer.max_steps=5", "trainer.progress=false")
    assert_refused(done, runs_root, f"the MNIST files under {raw} are corrupt")
