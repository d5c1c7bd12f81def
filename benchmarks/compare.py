"""Compare two runs of ``python -m benchmarks`` cell by cell.

Usage::

    python -m benchmarks.compare OLD.json NEW.json [--threshold 0.03]

For every aiozc receiver and cell it prints the receiver's median CPU per
message divided by the best non-aiozc receiver's median in the same run
(ratios, so that two runs on a drifting machine compare), old against new,
and lists the cells where the new ratio is worse by more than the
threshold (a structural change must leave none beyond 3%).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

Cell = tuple[str, int, str]


def ratios(path: Path) -> dict[tuple[str, Cell], float]:
    """aiozc receivers' median us/msg over the best peer's, per cell."""
    data = json.loads(path.read_text())
    samples: dict[tuple[str, Cell], list[float]] = defaultdict(list)
    is_aiozc: dict[str, bool] = {}
    for run in data["runs"]:
        cell = (run["workload"], run["frame_size"], run["sender"])
        samples[(run["receiver"], cell)].append(run["us_per_msg"])
        is_aiozc[run["receiver"]] = run["aiozc"]
    medians = {key: statistics.median(xs) for key, xs in samples.items()}
    out = {}
    for cell in {c for _, c in medians}:
        peers = [v for (rx, c), v in medians.items() if c == cell and not is_aiozc[rx]]
        if not peers:
            continue
        best = min(peers)
        for (rx, c), v in medians.items():
            if c == cell and is_aiozc[rx]:
                out[(rx, cell)] = v / best
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.compare")
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--threshold", type=float, default=0.03)
    args = ap.parse_args(argv)
    old, new = ratios(args.old), ratios(args.new)
    worse = []
    for key in sorted(set(old) & set(new), key=str):
        change = new[key] / old[key] - 1
        rx, (workload, size, sender) = key
        print(f"{rx:50} {workload:4} {size:>8} {sender:9} "
              f"old {old[key]:.3f} new {new[key]:.3f} {change:+.1%}")
        if change > args.threshold:
            worse.append(key)
    print(f"{len(worse)} of {len(set(old) & set(new))} cells worse by more than "
          f"{args.threshold:.0%}")
    return 1 if worse else 0


if __name__ == "__main__":
    raise SystemExit(main())
