"""How the report writes numbers (percentages, milliseconds, bytes, intervals; ``—`` for none)
and escapes text into HTML."""

from __future__ import annotations

from html import escape
from typing import Any

__all__ = ["count", "esc", "g", "html_table", "interval", "mib", "ms", "pct", "quantile_text"]


def pct(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{100 * x:.{digits}f}%"


def ms(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.1f} ms" if x >= 10 else f"{x:.2f} ms"


def g(x: float | None) -> str:
    """Four significant digits."""
    return "—" if x is None else f"{x:.4g}"


def count(x: int | None) -> str:
    return "—" if x is None else f"{x:,}"


def mib(x: float | None) -> str:
    return "—" if x is None else f"{x / 1048576:,.1f} MiB"


def quantile_text(lat: dict[str, Any], name: str) -> str:
    value = lat[name]
    if value is None and lat["completed"] + lat["censored"]:
        deadline = lat["deadline_ms"]
        return "≥ deadline" if deadline is None else f"≥ {ms(deadline)} (deadline)"
    return ms(value)


def interval(lower: float | None, upper: float | None) -> str:
    """``[lower, upper]``; a missing bound is unbounded (JSON carries ∞ as null)."""
    if lower is None and upper is None:
        return "—"
    lo = "−∞" if lower is None else g(lower)
    hi = "∞" if upper is None else g(upper)
    return f"[{lo}, {hi}]"


def esc(x: object) -> str:
    """Text that came from anywhere, safe in HTML (and in an attribute)."""
    return escape(str(x), quote=True)


def html_table(head: list[str], rows: list[list[str]], num: set[int] | None = None) -> str:
    """A table of already-escaped HTML cells; the columns in ``num`` (default: all but the first)
    are right-aligned numbers."""
    num = set(range(1, len(head))) if num is None else num
    cls = [' class="num"' if i in num else "" for i in range(len(head))]
    out = ["<table><thead><tr>"]
    out += [f"<th{cls[i]}>{h}</th>" for i, h in enumerate(head)]
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td{cls[i]}>{c}</td>" for i, c in enumerate(row)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)
