"""TensorBoard itself, live on loopback, serves what bnexp runs wrote: runs, scalars, layout, hparams."""

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from bnexp.runs import load_run

from conftest import FAST, run_dirs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def tensorboard(runs_root):
    """`tensorboard --logdir runs_root` on a free loopback port; stopped after the test."""
    port = free_port()
    binary = Path(sys.executable).parent / "tensorboard"
    proc = subprocess.Popen([str(binary), "--logdir", str(runs_root), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        yield base, proc
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def poll(proc, url, ready, timeout):
    """What TensorBoard serves at `url` once ready(it) holds, or its last answer at the timeout (None if
    it never answered): it lists runs, and their tags, while it is still reading their event files."""
    deadline, answer = time.time() + timeout, None
    while True:
        assert proc.poll() is None, proc.stderr.read()
        try:
            answer = fetch(url)
        except OSError:
            pass  # not listening yet
        if (answer is not None and ready(answer)) or time.time() > deadline:
            return answer
        time.sleep(0.5)


def wait_for_runs(base, proc, count, timeout=90):
    runs = poll(proc, f"{base}/data/runs", lambda runs: len(runs) >= count, timeout)
    if runs is None or len(runs) < count:
        raise AssertionError(f"tensorboard did not serve {count} runs within {timeout} s")
    return runs


def wait_for_tags(base, proc, runs, wanted, timeout=60):
    """{run: its scalar tags} once each of `runs` serves every tag in `wanted`, or at the timeout."""
    return poll(proc, f"{base}/data/plugin/scalars/tags",
                lambda tags: all(wanted <= set(tags.get(run, ())) for run in runs), timeout)


def wait_for_scalars(base, proc, run, tag, steps, timeout=60):
    """[wall_time, step, value] of `tag` in `run` once TensorBoard serves all of `steps`, or at the
    timeout: it serves a tag as soon as it has read its first event, the later ones after."""
    url = f"{base}/data/plugin/scalars/scalars?" + urllib.parse.urlencode({"run": run, "tag": tag})
    return poll(proc, url, lambda served: [step for _, step, _ in served] == list(steps), timeout)


def test_live_tensorboard_serves_runs_tags_layout_and_hparams(bnexp, runs_root, tensorboard):
    assert bnexp("train", "-m", "norm=none,batch", *FAST).returncode == 0
    base, proc = tensorboard
    names = {str(d.relative_to(runs_root)) for d in run_dirs(runs_root)}
    assert set(wait_for_runs(base, proc, 2)) == names  # one TensorBoard run per bnexp run, no sub-runs

    wanted = {"test/error", "train/loss", "probe/hidden3/p50", "opt/lr"}
    tags = wait_for_tags(base, proc, names, wanted)
    for run in names:
        assert wanted <= set(tags[run])

    layout = fetch(f"{base}/data/plugin/custom_scalars/layout")
    charts = {c["title"]: c for cat in layout["category"] for c in cat["chart"]}
    assert charts["test error"]["multiline"]["tag"] == ["^test/error$"]
    assert charts["train loss"]["multiline"]["tag"] == ["^train/loss$"]
    margin = charts["hidden3"]["margin"]["series"][0]
    assert (margin["value"], margin["lower"], margin["upper"]) == (
        "probe/hidden3/p50", "probe/hidden3/p15", "probe/hidden3/p85")

    experiment = fetch(f"{base}/data/plugin/hparams/experiment", {"experimentName": ""})
    hparams = {h["name"] for h in experiment["hparamInfos"]}
    assert {"model.name", "norm.name", "optim.lr", "optim.lr_mult", "trainer.batch_size", "trainer.seed"} <= hparams
    metrics = {m["name"]["tag"] for m in experiment["metricInfos"]}
    assert {"test/accuracy", "summary/final_accuracy"} <= metrics


def test_live_tensorboard_shows_each_variants_seeds_as_mean_and_band(bnexp, runs_root, tmp_path, tensorboard):
    """`bnexp report --out OUT` writes OUT/tensorboard: per variant, mean/min/max over its seeds."""
    assert bnexp("train", "-m", "norm=none,batch", "trainer.replicas=2", *FAST).returncode == 0
    out = runs_root / "report"  # inside the served logdir
    done = bnexp("report", str(runs_root), "--out", str(out))
    assert done.returncode == 0, done.stderr
    base, proc = tensorboard
    runs = wait_for_runs(base, proc, 6)  # 4 runs, 2 aggregates
    assert {"report/tensorboard/norm=none", "report/tensorboard/norm=batch"} <= set(runs)
    aggregates = {f"seeds/test/accuracy/{stat}" for stat in ("mean", "min", "max")}
    wait_for_tags(base, proc, ["report/tensorboard/norm=batch"], aggregates)

    layout = fetch(f"{base}/data/plugin/custom_scalars/layout")
    charts = {c["title"]: c for cat in layout["category"] for c in cat["chart"]}
    series = charts["test accuracy"]["margin"]["series"][0]
    assert (series["value"], series["lower"], series["upper"]) == (
        "seeds/test/accuracy/mean", "seeds/test/accuracy/min", "seeds/test/accuracy/max")

    seeds = [load_run(p) for p in sorted((runs_root).glob("*/*/*norm=batch*/seed_*"))]
    assert len(seeds) == 2
    for stat, expected in (("mean", lambda v: sum(v) / 2), ("min", min), ("max", max)):
        steps = sorted(seeds[0].curves["test/accuracy"])
        served = wait_for_scalars(base, proc, "report/tensorboard/norm=batch", f"seeds/test/accuracy/{stat}", steps)
        assert [step for _, step, _ in served] == steps
        for _, step, value in served:
            assert value == pytest.approx(expected([s.curves["test/accuracy"][step] for s in seeds]), abs=1e-6)


def test_live_tensorboard_serves_the_ics_and_landscape_probes(bnexp, runs_root, tensorboard):
    done = bnexp("train", *FAST, "trainer.max_steps=100", "probes.ics_every=50", "probes.landscape_every=50")
    assert done.returncode == 0, done.stderr
    base, proc = tensorboard
    [name] = wait_for_runs(base, proc, 1)
    wanted = {"ics/hidden2/l2", "ics/output/cos", "shift/hidden1/mean", "landscape/beta_smoothness"}
    assert wanted <= set(wait_for_tags(base, proc, [name], wanted)[name])
    served = wait_for_scalars(base, proc, name, "ics/hidden2/l2", [50, 100])
    assert [step for _, step, _ in served] == [50, 100]

    layout = fetch(f"{base}/data/plugin/custom_scalars/layout")
    charts = {c["title"]: c for cat in layout["category"] for c in cat["chart"]}
    assert charts["hidden2 l2"]["multiline"]["tag"] == ["^ics/hidden2/l2$"]  # one chart per layer and measure
    assert charts["output cos"]["multiline"]["tag"] == ["^ics/output/cos$"]
    assert charts["hidden1 mean"]["multiline"]["tag"] == ["^shift/hidden1/mean$"]
    assert charts["beta_smoothness"]["multiline"]["tag"] == ["^landscape/beta_smoothness$"]
