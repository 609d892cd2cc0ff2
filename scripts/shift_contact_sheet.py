"""What each shifted test set looks like: a contact sheet (one row per corruption, the clean set
first) and a table of each corruption's family, severity, time to make and SHA-256.

    python scripts/shift_contact_sheet.py --data mnist --out results/bn_shift
    python scripts/shift_contact_sheet.py --data fashion_mnist --out results/bn_shift

The whole test set is corrupted (as bnexp/shift.py makes it for a run, timed here without the
cache); the sheet shows its first --columns images. The SHA-256 is of the 10,000 corrupted uint8 images: the same
on every run of this machine (the corruptions are deterministic); another CPU may round a float
differently in a few pixels, which the run's cache check, comparing with its own file, allows.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from bench_inception import cpu_name  # noqa: E402

from bnexp import shift  # noqa: E402
from bnexp.mnist import load_fashion_mnist, load_mnist  # noqa: E402

LOADERS = {"mnist": load_mnist, "fashion_mnist": load_fashion_mnist}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=sorted(LOADERS), default="mnist")
    parser.add_argument("--root", type=Path,
                        default=Path(os.environ.get("BNEXP_DATA", Path.home() / ".cache" / "bnexp" / "data")))
    parser.add_argument("--columns", type=int, default=12)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    _, (test_x, _) = LOADERS[args.data](args.root)
    rows, lines = [("clean", test_x)], []
    for name, corruption in shift.CORRUPTIONS.items():
        start = time.perf_counter()
        images = shift.corrupt(test_x, name)
        seconds = time.perf_counter() - start
        level = shift.severity_of(name, None)
        rows.append((f"{name}" + (f" ({level})" if level else ""), images))
        lines.append(f"| {name} | {corruption.family} | {level or 'one form'} | {seconds:.1f} | "
                     f"{(images != test_x).double().mean():.0%} | `{shift.sha256(images)[:16]}` |")
    args.out.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(len(rows), args.columns, figsize=(args.columns * 0.6, len(rows) * 0.62))
    for r, (label, images) in enumerate(rows):
        for c in range(args.columns):
            axes[r, c].imshow(images[c], cmap="gray", vmin=0, vmax=255)
            axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    figure.suptitle(f"{args.data} test set under each corruption (bnexp/shift.py, the default severity)", fontsize=9)
    figure.tight_layout()
    figure.savefig(args.out / f"contact_sheet_{args.data}.png", dpi=110)
    header = (f"# {args.data}: the shifted test sets\n\n"
              f"Command: `python {' '.join(sys.argv)}`, {time.strftime('%Y-%m-%d')}, torch {torch.__version__}, "
              f"{cpu_name()}, {torch.get_num_threads()} threads. Severity: MNIST-C's "
              f"default (data.shift_severity=null). Changed: the share of pixels that differ from the clean set.\n"
              f"The figure: contact_sheet_{args.data}.png.\n\n"
              "| corruption | family | severity | seconds to make | changed | SHA-256 (first 16) |\n"
              "|---|---|---|---:|---:|---|\n")
    (args.out / f"corruptions_{args.data}.md").write_text(header + "\n".join(lines) + "\n")
    print(header + "\n".join(lines))


if __name__ == "__main__":
    main()
