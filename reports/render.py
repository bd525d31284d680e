"""Turn the report's facts into ``report.html``, ``report.json`` and ``report.md`` text.

Every renderer reads its numbers from :func:`reports.facts.facts`, so the three files agree.
The HTML page is self-contained: inline CSS and inline SVG charts, no JavaScript, no fonts or images
fetched from anywhere. Every piece of text that came from a request, a response or the database
(ids, routes, reasons, bodies) goes through :func:`html.escape` — it is data, never markup.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from reports.fmt import count, g, interval, mib, ms, pct, quantile_text

__all__ = ["render_html", "render_json", "render_markdown"]

_CSS = """
*{box-sizing:border-box}
body{font:14px/1.45 "DejaVu Sans",system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2933;
 background:#f4f6f8;margin:0;padding:24px}
main{max-width:1100px;margin:0 auto}
header h1{font-size:24px;margin:0 0 4px}
header p{margin:0;color:#52606d}
section{background:#fff;border:1px solid #dde3ea;border-radius:8px;padding:16px 20px;margin:16px 0}
h2{font-size:17px;margin:0 0 12px;border-bottom:1px solid #e4e9ef;padding-bottom:6px}
table{border-collapse:collapse;width:100%;font-size:13px;margin:8px 0}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #edf0f3;vertical-align:top}
th{background:#f7f9fb;font-weight:600;color:#3e4c59}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.verdict{border-left:8px solid #7b8794}
.verdict .decision{font-size:28px;font-weight:700;letter-spacing:.5px}
.verdict.promote{border-left-color:#2f9e44}.verdict.promote .decision{color:#2f9e44}
.verdict.reject{border-left-color:#c92a2a}.verdict.reject .decision{color:#c92a2a}
.verdict.keep_observing{border-left-color:#e8890c}.verdict.keep_observing .decision{color:#b86e00}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;
 background:#e4e7eb;color:#323f4b}
.badge.pass{background:#d3f9d8;color:#2b8a3e}.badge.fail{background:#ffe3e3;color:#c92a2a}
.badge.warn{background:#fff3bf;color:#a66b00}.badge.inconclusive{background:#fff0db;color:#b35c00}
.tiles{display:flex;flex-wrap:wrap;gap:10px;margin:6px 0 10px}
.tile{flex:1 1 150px;background:#f7f9fb;border:1px solid #e4e9ef;border-radius:6px;padding:8px 12px}
.tile b{display:block;font-size:20px}
.tile span{color:#52606d;font-size:12px}
.note{color:#52606d;font-size:12.5px}
.empty{font-size:20px;font-weight:600;color:#52606d;text-align:center;padding:40px 0}
figure{margin:10px 0;text-align:center}
figure svg{max-width:100%;height:auto}
pre{white-space:pre-wrap;word-break:break-all;background:#f7f9fb;border:1px solid #e4e9ef;
 border-radius:4px;padding:6px 8px;margin:4px 0;font:12px/1.35 "DejaVu Sans Mono",monospace;
 max-height:140px;overflow:auto}
code{font:12px "DejaVu Sans Mono",monospace}
footer{color:#7b8794;font-size:12px;text-align:center;margin:20px 0}
h3{font-size:15px;margin:12px 0 4px}
table.heatmap{width:auto}table.heatmap td.heat{width:22px;height:16px;padding:0;border:1px solid #fff}
.drift-warning{background:#fff3bf;border:1px solid #f0c36d;border-radius:4px;padding:6px 10px}
"""

MD_REASONS = 6  # a pull-request comment stays short
_SIDE = {"prod": "production", "cand": "candidate", "twin": "production twin"}


# -- HTML -----------------------------------------------------------------------------------------
def _e(x: object) -> str:
    return escape(str(x), quote=True)


def _table(head: list[str], rows: list[list[str]], num: set[int] | None = None) -> str:
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


def _tiles(items: list[tuple[str, str]]) -> str:
    return (
        '<div class="tiles">'
        + "".join(f'<div class="tile"><b>{v}</b><span>{k}</span></div>' for k, v in items)
        + "</div>"
    )


def _figure(plots: dict[str, str], name: str) -> str:
    return f"<figure>{plots[name]}</figure>" if name in plots else ""


def _verdict_html(f: dict[str, Any]) -> str:
    v = f["verdict"]
    if v is None:
        return (
            '<section class="verdict"><div class="decision">NO VERDICT</div>'
            '<p class="note">The experiment had not started by the end of this day.</p></section>'
        )
    decision = str(v["decision"])
    reasons = "".join(f"<li>{_e(r)}</li>" for r in v["reasons"])
    elapsed = "—" if v["elapsed_hours"] is None else f"{v['elapsed_hours']:.1f}"
    return (
        f'<section class="verdict {_e(decision.lower())}">'
        f'<div class="decision">{_e(decision.upper())}</div>'
        f"<p>score <b>{_e(g(v['score']))}</b>/100 · policy <code>{_e(v['policy'])}</code> · "
        f"judged at {_e(v['at'])} after {_e(elapsed)} h of shadowing</p>"
        f"<ul>{reasons}</ul></section>"
    )


def _scorecard_html(f: dict[str, Any]) -> str:
    v = f["verdict"]
    if v is None or not v["checks"]:
        return ""
    applicable = [c for c in v["checks"] if str(c["status"]).lower() != "na"]
    skipped = [str(c["id"]) for c in v["checks"] if str(c["status"]).lower() == "na"]
    rows = [
        [
            f"<code>{_e(c['id'])}</code>{' <b title=critical>C</b>' if c['critical'] else ''}",
            _e(c["group"]),
            f'<span class="badge {_e(str(c["status"]).lower())}">{_e(str(c["status"]).upper())}</span>',
            _e(g(c["estimate"])),
            _e(interval(c["lower"], c["upper"])),
            _e(g(c["margin"])),
            _e(count(c["n"])),
            _e(c["reason"]),
        ]
        for c in applicable
    ]
    head = ["check", "group", "status", "estimate", "interval", "margin", "n", "reason"]
    table = _table(head, rows, num={3, 4, 5, 6})
    note = "C = critical check. Interval: the anytime-valid confidence sequence of the estimate."
    if skipped:
        note += f" Not applicable to this experiment: {', '.join(skipped)}."
    return f"<section><h2>Scorecard</h2>{table}<p class='note'>{_e(note)}</p></section>"


def _traffic_html(f: dict[str, Any]) -> str:
    t = f["traffic"]
    sides = list(t["outcomes"])
    rows = [
        [_e(o)] + [_e(count(t["outcomes"][s][o])) for s in sides] for o in t["outcomes"]["prod"]
    ]
    paired = t["paired"]
    for check in ("error", "timeout", "invalid"):
        p = paired[check]
        rows.append(
            [
                f"{_e(check)} rate (paired, n = {_e(count(p['n']))})",
                _e(pct(p["prod_rate"], 3)),
                _e(pct(p["cand_rate"], 3)),
            ]
            + ["—"] * (len(sides) - 2)
        )
    tiles = _tiles(
        [
            ("pairs stored", _e(count(t["pairs"]))),
            ("teed to the candidate", _e(count(t["teed"]))),
            ("shed", _e(count(t["outcomes"]["cand"]["shed"]))),
            ("skipped", _e(count(t["outcomes"]["cand"]["skipped"]))),
            (
                "outputs compared",
                _e(
                    f"{pct(t['coverage']['compared'] / t['coverage']['both_ok'])} of "
                    f"{count(t['coverage']['both_ok'])}"
                    if t["coverage"]["both_ok"]
                    else "none"
                ),
            ),
            (
                "pairs dropped",
                _e(count(t["spool_drops"]) if t["spool_drops"] is not None else "n/a"),
            ),
            ("pairs quarantined", _e(count(t.get("quarantined", 0)))),
        ]
    )
    note = f"Pairs dropped by proxies: {_e(t['spool_drops_note'])}."
    by_reason = t.get("quarantined_by_reason") or {}
    if by_reason:
        detail = ", ".join(f"{r} {count(n)}" for r, n in by_reason.items())
        note += f" Pairs refused by the comparator and kept in its quarantine: {_e(detail)}."
    table = _table(["outcome"] + [_e(_SIDE.get(s, s)) for s in sides], rows)
    return f"<section><h2>Traffic</h2>{tiles}{table}<p class='note'>{note}</p></section>"


def _latency_html(f: dict[str, Any], plots: dict[str, str]) -> str:
    lat = f["latency"]
    checks = {c["id"]: c for c in (f["verdict"] or {}).get("checks", [])}
    rows = []
    for q in ("p50", "p95", "p99"):
        c = checks.get(f"latency_{q}")
        ratio = "—"
        if c is not None:
            est = "n/a" if c["estimate"] is None else g(c["estimate"])
            ratio = f"{est} {interval(c['lower'], c['upper'])}"
        rows.append(
            [q, _e(quantile_text(lat["prod"], q)), _e(quantile_text(lat["cand"], q)), _e(ratio)]
        )
    rows.append(
        ["completed / timeouts"]
        + [
            _e(f"{count(lat[s]['completed'])} / {count(lat[s]['censored'])}")
            for s in ("prod", "cand")
        ]
        + [""]
    )
    table = _table(["", "production", "candidate", "ratio cand/prod [interval, whole run]"], rows)
    return (
        f"<section><h2>Latency</h2>{table}"
        "<p class='note'>Quantiles of the day from log-bucket histograms (1% relative error), "
        "after the warm-up; a timeout counts as a latency at least the deadline. Intervals are the "
        "verdict's anytime-valid confidence sequences over the whole experiment. A gap in the "
        "hourly series is an hour whose quantile fell among the timeouts.</p>"
        f"{_figure(plots, 'latency_cdf')}{_figure(plots, 'hourly')}</section>"
    )


def _divergence_html(f: dict[str, Any], plots: dict[str, str]) -> str:
    d = f["divergence"]
    cls = d["classification"]
    parts = ["<section><h2>Divergence</h2>"]
    if cls:
        parts.append(
            _tiles(
                [
                    ("pairs compared (both ok)", _e(count(cls["n"]))),
                    ("top-1 disagreement", _e(pct(cls["disagreement_rate"]))),
                    ("JS distance > 0.1", _e(pct(cls["js_tail_rate"]))),
                    ("mean JS distance", _e(g(cls["js_mean"]))),
                ]
            )
        )
    for task, label in (
        ("regression", "Regression"),
        ("embedding", "Embedding"),
        ("ranking", "Ranking"),
    ):
        if task in d:
            rows = [
                [_e(k), _e(g(v) if isinstance(v, float) else count(v))] for k, v in d[task].items()
            ]
            parts.append(f"<h3>{label}</h3>" + _table(["measure", "value"], rows))
    if not cls and not any(t in d for t in ("regression", "embedding", "ranking")):
        parts.append("<p class='note'>No pair had two valid answers to compare.</p>")
    parts += [_figure(plots, n) for n in ("confusion", "class_hist", "divergence")]
    parts.append("</section>")
    return "".join(parts)


def _memory_html(f: dict[str, Any], plots: dict[str, str]) -> str:
    if not f["memory"]:
        return (
            "<section><h2>Memory</h2><p class='note'>No memory samples on this day.</p></section>"
        )
    rows = [
        [
            _e(f"{_SIDE.get(m['side'], m['side'])} {m['kind']}"),
            _e(count(m["n"])),
            _e(mib(m["min_bytes"])),
            _e(mib(m["max_bytes"])),
            _e(mib(m["last_bytes"])),
            _e(mib(m["limit_bytes"])),
        ]
        for m in f["memory"]
    ]
    table = _table(["series", "samples", "min", "max", "last", "limit"], rows)
    return f"<section><h2>Memory</h2>{table}{_figure(plots, 'memory')}</section>"


def _pre(text: str | None, label: str = "") -> str:
    label = f"<span class='note'>{_e(label)}</span>" if label else ""
    if text is None:
        return f"{label}<span class='note'> not stored</span><br>"
    return f"{label}<pre>{_e(text)}</pre>"


def _divergent_html(f: dict[str, Any]) -> str:
    pairs = f["most_divergent"]
    if not pairs:
        return ""
    rows = []
    for p in pairs:
        classes = " → ".join("—" if c is None else str(c) for c in p["classes"])
        rows.append(
            [
                f"<code>{_e(p['request_id'])}</code><br><span class='note'>{_e(p['ts'])}<br>"
                f"{_e(p['route'])}</span>",
                _e(" / ".join(p["outcomes"])) + "<br>" + _e(classes),
                _e(g(p["divergence"])),
                _pre(p["request_excerpt"]),
                _pre(p["prod_excerpt"], "production") + _pre(p["cand_excerpt"], "candidate"),
            ]
        )
    head = [
        "request",
        "outcomes · classes (prod → cand)",
        "divergence",
        "request body",
        "production / candidate body",
    ]
    return (
        "<section><h2>Most divergent requests</h2>"
        + _table(head, rows, num={2})
        + "<p class='note'>Bodies appear only when the comparator stores them "
        "(<code>store_request_bodies</code>); they are shown as text, truncated.</p></section>"
    )


def _previous_html(f: dict[str, Any]) -> str:
    prev = f["previous_day"]
    labels = {
        "pairs": ("pairs", count),
        "cand_error_rate": ("candidate error rate", lambda x: pct(x, 3)),
        "cand_timeout_rate": ("candidate timeout rate", lambda x: pct(x, 3)),
        "error_delta": ("error rate Δ (cand − prod)", lambda x: pct(x, 3)),
        "top1_disagreement": ("top-1 disagreement", pct),
        "js_tail_rate": ("JS distance > 0.1", pct),
        "prod_p99_ms": ("production p99", ms),
        "cand_p99_ms": ("candidate p99", ms),
    }
    rows = []
    for key, (label, fmt) in labels.items():
        today, before = prev["today"][key], prev["numbers"][key]
        change = "—"
        if today is not None and before:
            change = f"{100 * (today - before) / abs(before):+.1f}%"
        rows.append([_e(label), _e(fmt(today)), _e(fmt(before)), _e(change)])
    head = ["measure", _e(f["day"]), _e(prev["day"]), "change"]
    return f"<section><h2>Compared with the previous day</h2>{_table(head, rows)}</section>"


def _heat_color(rate: float | None, top: float) -> str:
    if rate is None:
        return "#f4f6f8"
    x = 0.0 if top <= 0 else min(1.0, rate / top)
    # white (agreement) to red (the day's highest disagreement)
    return f"rgb(255,{round(255 - 150 * x)},{round(255 - 170 * x)})"


def _segments_html(f: dict[str, Any]) -> str:
    dims = f.get("segments") or []
    if not dims:
        return ""
    parts = ["<section id='segments'><h2>Segments</h2>"]
    for d in dims:
        rows = []
        for r in d["rows"]:
            w = r["worst"]
            status = str(w["status"]) if w else "—"
            rows.append(
                [
                    f"<code>{_e(r['value'])}</code>",
                    _e(count(r["pairs"])),
                    _e(pct(r["top1_disagreement"])),
                    _e(pct(r["error_delta"], 3)),
                    f"<code>{_e(w['id'])}</code>" if w else "—",
                    f'<span class="badge {_e(status.lower())}">{_e(status.upper())}</span>',
                    _e(g(w["estimate"]) if w else "—"),
                    _e(interval(w["lower"], w["upper"]) if w else "—"),
                    _e(g(w["margin"]) if w else "—"),
                    _e(g(w["distance"]) if w else "—"),
                ]
            )
        head = [
            "segment",
            "pairs",
            "top-1 disagreement",
            "error Δ",
            "nearest check",
            "status",
            "estimate",
            "interval",
            "margin",
            "beyond margin",
        ]
        parts.append(f"<h3>{_e(d['dimension'])}</h3>")
        parts.append(_table(head, rows, num={1, 2, 3, 6, 7, 8, 9}))
        heat = d["heatmap"]
        rates = [x for row in heat["cells"] for x in row if x is not None]
        top = max(rates, default=0.0)
        hours = [h[11:13] for h in heat["hours"]]
        cells = "".join(
            f"<tr><th><code>{_e(v)}</code></th>"
            + "".join(
                f'<td class="heat" style="background:{_heat_color(x, top)}" '
                f'title="{_e(v)} {_e(h)}: {_e(pct(x))} of {_e(count(n))} pairs"></td>'
                for x, n, h in zip(row, nrow, heat["hours"], strict=True)
            )
            + "</tr>"
            for v, row, nrow in zip(heat["values"], heat["cells"], heat["pairs"], strict=True)
        )
        head_row = "<tr><th></th>" + "".join(f"<th class='num'>{_e(h)}</th>" for h in hours)
        parts.append(
            f"<table class='heatmap' aria-label='top-1 disagreement by segment and hour'>"
            f"{head_row}</tr>{cells}</table>"
            f"<p class='note'>Heatmap: top-1 disagreement per segment (rows) and UTC hour "
            f"(columns), white 0 to red {_e(pct(top))}. Segments are the top "
            f"{len(heat['values'])} by pairs, the rest as (other); each critical check runs "
            f"per segment at α/(k·dimensions) and only its FAIL counts (a REJECT).</p>"
        )
    parts.append("</section>")
    return "".join(parts)


def _drift_html(f: dict[str, Any]) -> str:
    d = f.get("drift")
    if not d:
        return ""
    mix = d["prediction_mix"]
    rows = [
        [
            f"production's prediction mix (PSI of {mix.get('of', 'classes')})",
            _e(g(mix["psi"])),
            _e(mix["level"] or "not enough pairs"),
            _e(" → ".join(count(n) for n in mix["n"])),
        ]
    ]
    rows += [
        [
            f"<code>{_e(x['feature'])}</code>",
            _e(g(x["psi"])),
            "",
            _e(" → ".join(map(count, x["n"]))),
        ]
        for x in d["features"]
    ]
    warn = "".join(f"<p class='drift-warning'><b>Warning:</b> {_e(w)}</p>" for w in d["warnings"])
    note = (
        "Day over day: this day against the day before (input features over a bounded sample of "
        f"stored request bodies, {d['features_compared']} compared). PSI < 0.1 stable, < 0.25 "
        "moderate, else large. Drift informs; it does not change the decision."
    )
    table = _table(["what", "PSI", "level", "n (before → day)"], rows, num={1})
    return f"<section id='drift'><h2>Drift of the window</h2>{warn}{table}<p class='note'>{_e(note)}</p></section>"


def render_html(f: dict[str, Any], plots: dict[str, str]) -> str:
    """The whole page. ``plots`` holds trusted SVG made by :mod:`reports.plots`; all else is escaped."""
    m = f["models"]
    title = f"shadowtee · {f['experiment']} · {f['day']}"
    sub = (
        f"Daily divergence report · {f['day']} ({f['tz']}: {f['start']} to {f['end']}) · "
        f"production {m['prod_version'] or '?'} vs candidate {m['cand_version'] or '?'}"
        f" · task {m['task'] or 'auto'}"
    )
    body = [f"<header><h1>{_e(f['experiment'])}</h1><p>{_e(sub)}</p></header>"]
    if f["empty"]:
        body.append(
            f"<section><div class='empty'>No traffic on this day.</div><p class='note' "
            f"style='text-align:center'>No pair of {_e(f['experiment'])} was stored between "
            f"{_e(f['start'])} and {_e(f['end'])}.</p></section>"
        )
        body.append(_verdict_html(f))
    else:
        body += [
            _verdict_html(f),
            _scorecard_html(f),
            _traffic_html(f),
            _latency_html(f, plots),
            _divergence_html(f, plots),
            _segments_html(f),
            _drift_html(f),
            _memory_html(f, plots),
            _divergent_html(f),
            _previous_html(f),
        ]
    body.append(
        f"<footer>{_e(f['schema'])} · built from {_e(len(f['hourly']))} hourly aggregates "
        f"and a bounded sample of pairs · experiment started {_e(m['started_at'])}</footer>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )


# -- JSON and Markdown ----------------------------------------------------------------------------
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
