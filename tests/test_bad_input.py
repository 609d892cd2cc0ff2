"""Bad input: a non-zero exit, one clear message, no traceback, and no summary claiming success."""

from pathlib import Path

import pytest

from bnexp.config import validate
from bnexp.errors import UserError

from conftest import FAST, summaries

EXPERIMENTS = ["fig1_mnist", "inception", "bn_baseline", "bn_x5", "bn_x30", "bn_x5_sigmoid", "inception_x5",
               "inception_sigmoid"]
# Every option of configs/norm and configs/scale: a new one is checked against every preset by being there.
NORMS = sorted(p.stem for p in (Path(__file__).parent.parent / "configs" / "norm").glob("*.yaml"))
SCALES = sorted(p.stem for p in (Path(__file__).parent.parent / "configs" / "scale").glob("*.yaml"))


def assert_refused(done, runs_root, message):
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not any(s["status"] == "completed" for s in summaries(runs_root))


@pytest.mark.parametrize("override, message", [
    ("optim.lr=0", "optim.lr must be a number > 0, got 0"),
    ("trainer.batch_size=1", "norm=batch needs more than one example per batch (trainer.batch_size=1"),
    ("trainer.max_steps=abc", "trainer.max_steps must be a whole number > 0, got 'abc'"),
    ("trainer.max_steps=100.5", "trainer.max_steps must be a whole number > 0, got 100.5"),
    ("model.hidden=[100,0,100]", "model.hidden must be a list of whole numbers >= 1, got [100, 0, 100]"),
    ("+trainer.typo=1", "unknown setting trainer.typo"),
    ("norm=ghost trainer.batch_size=30", "norm=ghost needs the batch size (30) to be a multiple of "
                                         "norm.virtual_batch (4)"),
    ("trainer.device=tpu", "trainer.device must be one of auto, cpu, cuda, got 'tpu'"),
    ("data.train_subset=0", "data.train_subset must be a whole number >= 1 or null, got 0"),
    ("model.dropout=1", "model.dropout must be a number [0, 1), got 1"),
    ("model.dropout_at=middle", "model.dropout_at must be one of every, last, got 'middle'"),
    ("norm.position=after", "norm.position must be one of pre, post, got 'after'"),
    ("model.skipinit=true", "model.skipinit scales residual branches: set model.residual=true too"),
    ("probes.grad_every=-1", "probes.grad_every must be a whole number >= 0, got -1"),
    ("probes.variance_shift=yes", "probes.variance_shift must be true or false, got 'yes'"),
    ("trainer.eval_train=2", "trainer.eval_train must be true or false, got 2"),
    ("model.depth=0", "model.depth must be a whole number >= 1 or null, got 0"),
    ("model.depth=3 model.hidden=[100,50]", "model.depth repeats one width, but model.hidden lists several"),
    ("data.train_subset=5000", "data.train_subset=5000 exceeds the 2048 training examples"),
])
def test_a_user_error_is_one_line_on_stderr(bnexp, runs_root, override, message):
    done = bnexp("train", *FAST, *override.split())
    assert_refused(done, runs_root, message)
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith(f"bnexp: error: {message}")


def test_settings_are_refused_before_the_data_is_looked_for(bnexp, runs_root):
    # No MNIST under BNEXP_DATA and no download allowed: a check made after loading would say that instead.
    done = bnexp("train", "data=mnist", "data.download=false", "norm=ghost", "trainer.batch_size=30")
    assert_refused(done, runs_root, "norm=ghost needs the batch size (30)")
    assert "MNIST" not in done.stderr


@pytest.mark.parametrize("override, message", [
    ("trainer.nope=1", "Could not override 'trainer.nope'"),  # Hydra's own message, with its hint
    ("norm=groupish", "Could not find 'norm/groupish'"),
    ("hydra/launcher=slurmish", "Could not find 'hydra/launcher/slurmish'"),
    ("norm=group norm.sync=true", "Could not override 'norm.sync'"),
    ("trainer.checkpoint_every=75", "trainer.checkpoint_every must be a multiple of trainer.log_every (50)"),
])
def test_bad_config_is_refused(bnexp, runs_root, override, message):
    assert_refused(bnexp("train", *FAST, *override.split()), runs_root, message)


@pytest.mark.parametrize("overrides, message", [
    # the wrong type
    (["optim.lr=fast"], "optim.lr must be a number > 0, got 'fast'"),
    (["trainer.amp=yes"], "trainer.amp must be true or false, got 'yes'"),
    (["trainer.progress=1"], "trainer.progress must be one of auto, true, false, got 1"),
    (["trainer.seed=1.5"], "trainer.seed must be a whole number [0, 4294967295], got 1.5"),
    (["trainer.targets=[0.5,high]"], "trainer.targets must be a number (0, 1] or a list of them"),
    (["model.hidden=100"], "model.hidden must be a list of whole numbers >= 1, got 100"),
    (["data.std=[0.5,zero]"], "data.std must be a number > 0 or a list of them"),
    (["trainer.threads=two"], "trainer.threads must be a whole number > 0 or null, got 'two'"),
    # out of range
    (["optim.lr=nan"], "optim.lr must be a number > 0, got nan"),
    (["optim.lr=inf"], "optim.lr must be a number > 0, got inf"),
    (["optim.momentum=1.5"], "optim.momentum must be a number [0, 1), got 1.5"),
    (["trainer.eval_every=0"], "trainer.eval_every must be a whole number > 0, got 0"),
    (["trainer.targets=[0.5,1.5]"], "trainer.targets must be a number (0, 1] or a list of them, got [0.5, 1.5]"),
    (["data.std=0"], "data.std must be a number > 0 or a list of them, got 0"),
    (["trainer.resume=maybe"], "trainer.resume must be one of auto, never, got 'maybe'"),
    (["norm=batch", "norm.momentum=2"], "norm.momentum must be a number [0, 1], got 2"),
    (["norm=batch_paper", "norm.inference=exact"], "norm.inference must be one of moving_average, population"),
    (["norm=batch_renorm", "norm.rmax=0.5"], "norm.rmax must be a number >= 1, got 0.5"),
    (["norm=ghost", "norm.virtual_batch=1"], "norm.virtual_batch must be a whole number >= 2, got 1"),
    (["norm=group", "norm.groups=0"], "norm.groups must be a whole number >= 1, got 0"),
    (["norm=layer", "norm.eps=0"], "norm.eps must be a number > 0, got 0"),
    (["model=inception", "model.width=0"], "model.width must be a number > 0, got 0"),
    (["model=inception", "model.dropout=1"], "model.dropout must be a number [0, 1), got 1"),
    (["schedule=exponential", "schedule.decay_rate=0"], "schedule.decay_rate must be a number (0, 1], got 0"),
    (["data=synthetic", "data.num_classes=1"], "data.num_classes must be a whole number >= 2, got 1"),
    (["data=imagefolder"], "data.root is required: set data.root=..."),
    # between settings, and the model's shapes
    (["trainer.probe_unit=100"], "trainer.probe_unit=100 is beyond the 100 units of layer hidden1"),
    (["norm=group", "norm.groups=3"], "norm=group with norm.groups=3 does not divide 100 channels"),
    (["norm=instance"], "norm=instance normalizes each channel over its spatial positions"),
    (["optim.momentum=0", "optim.nesterov=true"], "optim.nesterov=true needs optim.momentum > 0"),
    (["model=inception", "data=synthetic", "data.shape=[784]"], "model=inception needs images"),
])
def test_every_setting_is_checked(compose, overrides, message):
    cfg = compose(*overrides)
    with pytest.raises(UserError, match="^bnexp: error: ") as refused:
        validate(cfg)
    assert message in str(refused.value)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("norm", NORMS)
def test_every_preset_with_every_norm_passes_validation(compose, experiment, norm):
    """The defaults fit together: every setting has a rule, norm.virtual_batch divides every preset's
    batch size, group counts divide every width. Instance norm needs a conv net."""
    cfg = compose(f"experiment={experiment}", f"norm={norm}")
    if norm == "instance" and cfg.model.name == "mlp":
        with pytest.raises(UserError, match="norm=instance"):
            validate(cfg)
    else:
        validate(cfg)


def test_batch_size_one_is_fine_without_bn(bnexp, runs_root):
    done = bnexp("train", *FAST, "norm=none", "trainer.batch_size=1", "model.activation=relu", "optim.lr=0.02")
    assert done.returncode == 0, done.stderr
    [summary] = summaries(runs_root)
    assert summary["status"] == "completed" and summary["steps"] == 200
    assert summary["final_accuracy"] > 0.5  # it learns, one example a step (10 classes: chance is 0.1)


@pytest.mark.parametrize("root", ["{blocker}/runs", "{tmp}/{long}"])
def test_an_unusable_output_dir_is_refused(bnexp, runs_root, tmp_path, root):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    root = root.format(blocker=blocker, tmp=tmp_path, long="x" * 300)  # not a directory; a name too long
    for args in (["train"], ["train", "-m"]):
        done = bnexp(*args, *FAST, f"runs_root={root}")
        assert_refused(done, runs_root, f"output directory {root}")
        assert len(done.stderr.splitlines()) == 1
        assert blocker.read_text() == "not a directory"


def test_corrupt_data_file_is_refused(bnexp, runs_root, tmp_path):
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"\x00\x00\x08\x03garbage")
    done = bnexp("train", "data=mnist", "trainer.max_steps=5", "trainer.progress=false")
    assert_refused(done, runs_root, f"the MNIST files under {raw} are corrupt")


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("experiment", [e for e in EXPERIMENTS if e != "fig1_mnist"])
def test_every_scale_preset_passes_validation(compose, experiment, scale):
    validate(compose(f"experiment={experiment}", f"scale={scale}"))
