"""One claim per row, one dataset (or study) per column: the verdicts of several verdict.csv files
(written by `bnexp report --claims`) side by side, as the README's tables show them. Rows follow
the first file's claims, then any the others add; a claim a file lacks is "-"; "not after Holm"
marks a decided verdict that does not survive its study's family-wise check.

    python scripts/verdict_table.py MNIST=results/schedule/mnist/verdict.csv \\
        Fashion-MNIST=results/schedule/fashion_mnist/verdict.csv
    python scripts/verdict_table.py --link results/bn_init MNIST=results/bn_init/mnist/verdict.csv ...
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

HOLM = {"does not survive": "; not after Holm"}  # a decided verdict that the family-wise check does not keep


def column(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"expected LABEL=PATH/verdict.csv, got {text!r}")
    return label, Path(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("columns", nargs="+", type=column, help="LABEL=PATH/verdict.csv, one per column")
    parser.add_argument("--link", help="a folder each row links to (the study's results)")
    args = parser.parse_args(argv)
    verdicts: list[dict[str, dict]] = []
    for _, path in args.columns:
        try:
            with open(path, newline="") as f:
                verdicts.append({row["id"]: row for row in csv.DictReader(f)})
        except (OSError, KeyError, csv.Error) as e:
            print(f"verdict_table: error: {path} is not a readable verdict.csv ({type(e).__name__}: {e})",
                  file=sys.stderr)
            return 2
    ids = list(dict.fromkeys(i for table in verdicts for i in table))
    header = ["claim", *(label for label, _ in args.columns), *(["results"] if args.link else [])]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i in ids:
        claim = next(table[i]["claim"] for table in verdicts if i in table)
        cells = [f"{t[i]['value']}: **{t[i]['verdict']}** ({t[i]['seeds']} seeds"
                 f"{HOLM.get(t[i].get('family_wise'), '')})" if i in t else "-" for t in verdicts]
        lines.append("| " + " | ".join([claim, *cells, *([f"[{args.link}]({args.link})"] if args.link else [])])
                     + " |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
