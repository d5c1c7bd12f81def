"""Paired A/B: two source trees of aiozc, cell by cell, interleaved.

Usage::

    python -m benchmarks.ab OLD_TREE NEW_TREE [--rounds 3] [--repeats 3]
                            [--only NAME;NAME...] [--cells bulk:32768:plain,...]
                            [--output FILE]
    python -m benchmarks.ab --from-json FILE

Each tree is a checkout with its extensions built in place (``python
setup.py build_ext --inplace``) and its own ``benchmarks`` package.  A
round runs OLD then NEW, each in a fresh process that imports that tree's
aiozc and that tree's receivers, with ``--repeats`` interleaved repeats of
every (receiver, cell); rounds alternate the trees so that a drift of the
machine hits both alike.  Two full ``python -m benchmarks`` runs taken
minutes apart differ by more than the 3% the structure issue allows (the
bimodal MSG_ZEROCOPY cells by 10-30%); pairing and pooling the rounds is
what makes a difference of a few percent visible at all.

Each tree runs its own harness (benchmarks/_runner.py, _receivers.py,
_sender.py): a change there shows as a change of the peers.  The listener
change of 2026-11-27 (IPPROTO_TCP, so asyncio's peers get TCP_NODELAY as in
real use) is one: to compare a tree from before it on the RPC cells, give
that tree the newer _runner.py first.

For every aiozc receiver and cell it prints the median, over all runs of a
tree, of the receiver's CPU per message divided by the best peer's in the
same run (asyncio/aiofastnet BufferedProtocol, asyncio Protocol), and the
change from OLD to NEW; and the same for the receiver's plus the sender's
CPU.  Over loopback the kernel copies a MSG_ZEROCOPY sender's pages at
delivery, in whichever process transmits them (on the receiver's window
updates when the sender is window-limited): where the receiver's CPU moves
and the sum does not, the work moved between the two processes.

The last lines are a control: the same count for the peers, whose code is
the same in both trees and which run in the same rounds.  On the
project's 2-vCPU VM, three full runs of 7 x 2 or 4 x 3 found 29-49% of the
peers' cells more than 3% slower in NEW and 4-6% "significant" (p < 0.05,
the rate chance alone gives): a cell of aiozc flagged at that rate is the
machine, and one that stands out must be run again on its own to count.
``--aa JSON1 JSON2`` compares the OLD tree of two saved runs with itself.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from ._report import rank_sum_p

#: Peers a ratio is taken against (the best of them in the same run).
PEERS = ("asyncio BufferedProtocol", "aiofastnet BufferedProtocol", "asyncio Protocol")
#: A change beyond this is flagged (the structure issue's criterion).
FLAG = 0.03

# Runs in a fresh interpreter with the tree first on sys.path: that tree's
# aiozc and benchmarks (the API used here exists in every tree since the
# receivers moved to benchmarks/_receivers.py).
_CHILD = r"""
import json, os, sys
tree, names, cells, repeats = sys.argv[1], sys.argv[2].split(";"), sys.argv[3], int(sys.argv[4])
sys.path.insert(0, tree)
os.chdir(tree)
from benchmarks.__main__ import all_receivers, make_jobs, pin, pin_cpus
from benchmarks._runner import run_matrix
from benchmarks._sender import Peer
want = [c.split(":") for c in cells.split(",")]
rx, snd = pin_cpus()
pin(rx)
specs = [s for s in all_receivers(trio=True) if s.name in names]
jobs = [j for j in make_jobs(1.0) if any(
    j.workload == w and j.frame_size == int(n) and j.zerocopy == (s == "zerocopy")
    for w, n, s in want)]
peer = Peer(snd)
try:
    runs = run_matrix(specs, jobs, repeats, peer)
finally:
    peer.close()
print(json.dumps([[r.receiver, r.workload, r.frame_size, r.sender, r.repeat,
                   r.cpu_s * 1e6 / r.count, r.sender_cpu_s * 1e6 / r.count] for r in runs]))
"""

ALL_CELLS = ",".join(
    f"{w}:{n}:{s}" for s in ("plain", "zerocopy")
    for w, n in [("bulk", 512), ("bulk", 4096), ("bulk", 32768), ("bulk", 262144),
                 ("bulk", 1048576), ("rpc", 32768)])


def _receivers(tree: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c",
         ("import sys; sys.path.insert(0, sys.argv[1]); "
          "from benchmarks.__main__ import all_receivers; "
          "print(';'.join(s.name for s in all_receivers(trio=True)))"), tree],
        check=True, capture_output=True, text=True, cwd=tree)
    return out.stdout.strip().split(";")


def run_tree(tree: str, names: list[str], cells: str, repeats: int) -> list[list[Any]]:
    """One round of one tree: every (receiver, cell), ``repeats`` times."""
    out = subprocess.run([sys.executable, "-c", _CHILD, tree, ";".join(names), cells,
                          str(repeats)], check=True, capture_output=True, text=True, cwd=tree)
    rows: list[list[Any]] = json.loads(out.stdout.strip().splitlines()[-1])
    return rows


Key = tuple[str, str, int, str]


def compare(rows: dict[str, list[list[Any]]], old: str, new: str) -> list[str]:
    """Lines of the comparison (receiver-only and receiver+sender ratios)."""
    # (tree, round, repeat, cell) -> best peer's CPU in that run
    best: dict[tuple[str, int, int, str, int, str], float] = {}
    for tree, rs in rows.items():
        for rnd, rx, w, n, s, rep, us, snd_us in rs:
            if str(rx).split(" [")[0] in PEERS:
                k = (tree, rnd, rep, w, n, s)
                best[k] = min(us, best.get(k, us))
    ratios: dict[tuple[Key, str], list[float]] = defaultdict(list)
    sums: dict[tuple[Key, str], list[float]] = defaultdict(list)
    raw: dict[tuple[Key, str], list[float]] = defaultdict(list)
    for tree, rs in rows.items():
        for rnd, rx, w, n, s, rep, us, snd_us in rs:
            if not str(rx).startswith("aiozc"):
                continue
            peer = best.get((tree, rnd, rep, w, n, s))
            # (No peer in the run, --only without one: receiver CPU only.)
            ratios[((rx, w, n, s), tree)].append(us / peer if peer else math.nan)
            sums[((rx, w, n, s), tree)].append(us + snd_us)
            raw[((rx, w, n, s), tree)].append(us)
    lines = [(f"{'receiver':<50} {'cell':<22} {'old':>6} {'new':>6} {'change':>7}  "
              f"{'rx+snd old':>10} {'new':>7} {'change':>7}  {'rx only':>7} {'p':>5}")]
    flagged = significant = 0
    changes = []
    only: set[str] = set()
    for key in sorted({k for k, _ in ratios}):
        if not (ratios[(key, old)] and ratios[(key, new)]):
            only.add(key[0])  # a receiver one of the trees does not have
            continue
        o, n = statistics.median(ratios[(key, old)]), statistics.median(ratios[(key, new)])
        so, sn = statistics.median(sums[(key, old)]), statistics.median(sums[(key, new)])
        d, ds = n / o - 1, sn / so - 1
        a, b = raw[(key, old)], raw[(key, new)]
        dr = statistics.median(b) / statistics.median(a) - 1
        p = rank_sum_p(a, b)
        changes.append(d)
        flag = " <<<" if d > FLAG else ""
        flagged += d > FLAG
        if dr > FLAG and p < 0.05:
            flag += " (significant)"
            significant += 1
        rx, w, size, s = key
        lines.append(f"{rx:<50} {w} {size:>7} {s:<9} {o:6.3f} {n:6.3f} {d:+7.1%}  "
                     f"{so:10.1f} {sn:7.1f} {ds:+7.1%}  {dr:+7.1%} {p:5.3f}{flag}")
    lines.append(f"{len(changes)} cells; {flagged} worse than {FLAG:.0%} (receiver CPU / best "
                 f"peer); median change {statistics.median(changes):+.1%}; {significant} "
                 f"where the receiver's own CPU is more than {FLAG:.0%} higher and the runs "
                 "differ (rank-sum p < 0.05)")
    if only:
        lines.append("measured in one tree only (not compared): " + "; ".join(sorted(only)))
    lines += _control(rows, old, new, raw)
    return lines


def _control(rows: dict[str, list[list[Any]]], old: str, new: str,
             raw: dict[tuple[Key, str], list[float]]) -> list[str]:
    """The same count for the peers, whose code is the same in both trees.

    The peers run in the same rounds as aiozc's receivers, so what they
    show is what the machine alone does to the estimator: a change of aiozc
    that stands out is one that exceeds theirs (both on the receiver's own
    CPU, the only figure the peers have).
    """
    peer_raw: dict[tuple[Key, str], list[float]] = defaultdict(list)
    for tree, rs in rows.items():
        for _rnd, rx, w, n, s, _rep, us, _snd in rs:
            if not str(rx).startswith("aiozc"):
                peer_raw[((rx, w, n, s), tree)].append(us)

    def tally(runs: dict[tuple[Key, str], list[float]]) -> str:
        changes: list[float] = []
        significant = 0
        for key in sorted({k for k, _ in runs}):
            a, b = runs[(key, old)], runs[(key, new)]
            if not (a and b):
                continue
            d = statistics.median(b) / statistics.median(a) - 1
            changes.append(d)
            significant += d > FLAG and rank_sum_p(a, b) < 0.05
        if not changes:
            return "none"
        worse = sum(d > FLAG for d in changes)
        return (f"{len(changes)} cells, {worse} ({worse / len(changes):.0%}) more than "
                f"{FLAG:.0%} higher in NEW, median change {statistics.median(changes):+.1%}, "
                f"{significant} ({significant / len(changes):.0%}) of them with p < 0.05")

    return [("control, receiver's own CPU per message (the peers' code is the same in both "
             "trees: what they show is the machine's noise):"),
            f"  peers: {tally(peer_raw)}",
            f"  aiozc: {tally(raw)}"]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ab",
                                 description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("old", nargs="?", default="")
    ap.add_argument("new", nargs="?", default="")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="repeats per round (default 3)")
    ap.add_argument("--only", default=None,
                    help="receivers (exact names, ';'-separated; default: every aiozc "
                         "receiver and the peers the ratios use)")
    ap.add_argument("--cells", default=ALL_CELLS,
                    help="workload:size:sender, comma-separated (default: all 12)")
    ap.add_argument("--output", default=None, help="also write the raw runs (JSON) here")
    ap.add_argument("--from-json", default=None,
                    help="compare the runs saved by an earlier --output instead of running")
    ap.add_argument("--aa", nargs=2, default=None, metavar=("JSON1", "JSON2"),
                    help="A/A: compare the OLD tree's runs in two saved A/B runs (the same "
                         "code measured twice), to see what noise alone flags")
    args = ap.parse_args(argv)
    if args.aa:
        # The same code measured at two times, with the estimator of an A/B
        # (medians over as many runs per tree): every cell it flags is noise.
        first, second = (json.loads(Path(f).read_text()) for f in args.aa)
        rows = {"A": first["runs"][first["old"]], "B": second["runs"][second["old"]]}
        print(f"# A/A: {first['old']} in {args.aa[0]} (old) against the same tree in "
              f"{args.aa[1]} (new)")
        print("\n".join(compare(rows, "A", "B")))
        return 0
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        print("\n".join(compare(saved["runs"], saved["old"], saved["new"])))
        return 0
    if not (args.old and args.new):
        ap.error("OLD and NEW trees are required (or --from-json)")
    old, new = str(Path(args.old).resolve()), str(Path(args.new).resolve())
    if args.only:
        names = args.only.split(";")
    else:
        names = [n for n in _receivers(new)
                 if n.startswith("aiozc") or n.split(" [")[0] in PEERS]
    rows: dict[str, list[list[Any]]] = {old: [], new: []}
    for rnd in range(args.rounds):
        for tree in ((old, new) if rnd % 2 == 0 else (new, old)):
            print(f"[ab] round {rnd + 1}/{args.rounds}: {tree}", file=sys.stderr)
            rows[tree] += [[rnd, *r] for r in run_tree(tree, names, args.cells, args.repeats)]
    if args.output:
        Path(args.output).write_text(json.dumps({"old": old, "new": new, "runs": rows}))
    print("\n".join(compare(rows, old, new)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
