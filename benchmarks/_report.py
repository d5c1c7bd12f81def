"""Markdown for the benchmark reports: tables, sizes, ``median [min–max]``.

Every benchmark writes its report with these, so that the reports agree on
how a table, a size or a spread of repeats looks.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from aiozc._config import KiB, MiB


def emit(report: str, output: str | None) -> None:
    """Print ``report``, and also write it to ``output`` if given."""
    print(report)
    if output:
        with open(output, "w", encoding="utf-8") as f:
            f.write(report)


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table: the header row, the separator, one line per row."""
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def size_label(n: int) -> str:
    """``n`` bytes in the largest unit that divides it: '4 KiB', '1 MiB', '100 B'."""
    return f"{n // MiB} MiB" if n >= MiB and n % MiB == 0 else (
        f"{n // KiB} KiB" if n >= KiB and n % KiB == 0 else f"{n} B")


def median(xs: Sequence[float]) -> float:
    """The median of the repeats, NaN for none (a receiver that did not run)."""
    return statistics.median(xs) if xs else float("nan")


def median_range(xs: Sequence[float], digits: int = 0, *, bare_single: bool = False) -> str:
    """'median [min–max]' of the repeats, '–' for none.  ``bare_single``:
    a single repeat is shown alone, without its (empty) range."""
    if not xs:
        return "–"
    med = statistics.median(xs)
    if bare_single and len(xs) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} [{min(xs):.{digits}f}–{max(xs):.{digits}f}]"


def rank_sum_p(a: list[float], b: list[float]) -> float:
    """Two-sided p of the Mann-Whitney U test (normal approximation).

    The MSG_ZEROCOPY cells are bimodal over loopback (a run is fast or
    slow, 2-5x apart, in both trees alike), so a median of a dozen runs can
    move by more than 3% with nothing changed; the test says whether the
    two trees' runs differ at all.  With 132 cells, about 7 show p < 0.05
    by chance alone.
    """
    n1, n2 = len(a), len(b)
    if not n1 or not n2:
        return 1.0
    u = sum(1.0 if y > x else 0.5 if y == x else 0.0 for x in a for y in b)
    sd = math.sqrt(n1 * n2 * (n1 + n2 + 1) / 12)
    return math.erfc(abs(u - n1 * n2 / 2) / sd / math.sqrt(2)) if sd else 1.0
