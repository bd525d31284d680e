"""Turn the report's facts into ``report.json`` and ``report.md`` (a pull-request comment).

Both read their numbers from :func:`reports.facts.facts`, as the HTML page does, so the three
files agree.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from reports.fmt import count, g, pct, quantile_text

__all__ = ["render_json", "render_markdown"]

MD_REASONS = 6  # a pull-request comment stays short


def render_json(f: dict[str, Any]) -> str:
    return json.dumps(f, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def _md(text: object) -> str:
    """Plain text safe inside Markdown: no markup, no HTML (a PR comment renders both)."""
    out = escape(str(text), quote=False)
    for ch in "\\`*_[]|":
        out = out.replace(ch, "\\" + ch)
    return out


def _code(text: object) -> str:
    """Text inside a Markdown code span: escapes do not apply there, so drop backticks instead."""
    return "`" + str(text).replace("`", "'").replace("\n", " ") + "`"


def render_markdown(f: dict[str, Any]) -> str:
    """A short summary that fits a pull-request comment."""
    m = f["models"]
    lines = [
        f"### shadowtee · {_md(f['experiment'])} · {f['day']} ({_md(f['tz'])})",
        "",
        f"production {_code(m['prod_version'] or '?')} vs candidate {_code(m['cand_version'] or '?')}",
        "",
    ]
    v = f["verdict"]
    if v is None:
        lines.append("**No verdict**: the experiment had not started by the end of this day.")
    else:
        lines.append(
            f"**Verdict: {_md(str(v['decision']).upper())}** — score {g(v['score'])}/100, "
            f"{v['elapsed_hours']:.1f} h elapsed, policy {_code(v['policy'])}"
        )
        lines += [f"- {_md(r)}" for r in v["reasons"][:MD_REASONS]]
        if len(v["reasons"]) > MD_REASONS:
            lines.append(f"- … and {len(v['reasons']) - MD_REASONS} more (see report.html)")
    lines.append("")
    if f["empty"]:
        lines.append("**No traffic on this day.**")
        return "\n".join(lines) + "\n"
    t, lat = f["traffic"], f["latency"]
    cls = f["divergence"]["classification"]
    prev = f["previous_day"]["numbers"]
    rows = [
        ("pairs (teed)", f"{count(t['pairs'])} ({count(t['teed'])})", ""),
        (
            "outputs compared (both ok)",
            f"{count(t['coverage']['compared'])} of {count(t['coverage']['both_ok'])}",
            "",
        ),
        (
            "error rate",
            pct(t["paired"]["error"]["prod_rate"], 3),
            pct(t["paired"]["error"]["cand_rate"], 3),
        ),
        (
            "timeout rate",
            pct(t["paired"]["timeout"]["prod_rate"], 3),
            pct(t["paired"]["timeout"]["cand_rate"], 3),
        ),
        *[
            (q, quantile_text(lat["prod"], q), quantile_text(lat["cand"], q))
            for q in ("p50", "p95", "p99")
        ],
    ]
    lines += ["| | production | candidate |", "|---|---:|---:|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    if cls:
        lines.append(
            f"\nTop-1 disagreement **{pct(cls['disagreement_rate'])}** "
            f"(previous day {pct(prev['top1_disagreement'])}), JS distance > 0.1: "
            f"{pct(cls['js_tail_rate'])} of {count(cls['n'])} compared pairs."
        )
    if v is not None:
        bad = [
            c for c in v["checks"] if str(c["status"]).lower() in ("fail", "inconclusive", "warn")
        ]
        if bad:
            lines.append(
                "\nChecks not passing: "
                + "; ".join(f"{_code(c['id'])} {_md(str(c['status']).upper())}" for c in bad)
            )
    for w in (f.get("drift") or {}).get("warnings", []):
        lines.append(f"\n**Warning:** {_md(w)}")
    seg_fail = [
        f"{_code(s['dimension'] + '=' + s['value'])} {_code(s['id'])}"
        for s in (v or {}).get("segments", [])
        if str(s["status"]).upper() == "FAIL"
    ]
    if seg_fail:
        lines.append("\nSegments failing: " + "; ".join(seg_fail))
    lines.append("\nFull report: `report.html` (charts, scorecard, most divergent requests).")
    return "\n".join(lines) + "\n"
