"""Turn the report's facts into ``report.html`` (``report.json`` and ``report.md``:
:mod:`reports.markdown`).

Every renderer reads its numbers from :func:`reports.facts.facts`, so the three files agree.
The HTML page is self-contained: inline CSS and inline SVG charts, no JavaScript, no fonts or images
fetched from anywhere. Every piece of text that came from a request, a response or the database
(ids, routes, reasons, bodies) goes through :func:`html.escape` — it is data, never markup.
"""

from __future__ import annotations

from typing import Any

from reports.fmt import count, esc, g, html_table, interval, mib, ms, pct, quantile_text
from reports.render_segments import drift_html, segments_html

__all__ = ["render_html"]

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

_SIDE = {"prod": "production", "cand": "candidate", "twin": "production twin"}


# -- HTML -----------------------------------------------------------------------------------------
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
    reasons = "".join(f"<li>{esc(r)}</li>" for r in v["reasons"])
    elapsed = "—" if v["elapsed_hours"] is None else f"{v['elapsed_hours']:.1f}"
    return (
        f'<section class="verdict {esc(decision.lower())}">'
        f'<div class="decision">{esc(decision.upper())}</div>'
        f"<p>score <b>{esc(g(v['score']))}</b>/100 · policy <code>{esc(v['policy'])}</code> · "
        f"judged at {esc(v['at'])} after {esc(elapsed)} h of shadowing</p>"
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
            f"<code>{esc(c['id'])}</code>{' <b title=critical>C</b>' if c['critical'] else ''}",
            esc(c["group"]),
            f'<span class="badge {esc(str(c["status"]).lower())}">{esc(str(c["status"]).upper())}</span>',
            esc(g(c["estimate"])),
            esc(interval(c["lower"], c["upper"])),
            esc(g(c["margin"])),
            esc(count(c["n"])),
            esc(c["reason"]),
        ]
        for c in applicable
    ]
    head = ["check", "group", "status", "estimate", "interval", "margin", "n", "reason"]
    table = html_table(head, rows, num={3, 4, 5, 6})
    note = "C = critical check. Interval: the anytime-valid confidence sequence of the estimate."
    if skipped:
        note += f" Not applicable to this experiment: {', '.join(skipped)}."
    return f"<section><h2>Scorecard</h2>{table}<p class='note'>{esc(note)}</p></section>"


def _traffic_html(f: dict[str, Any]) -> str:
    t = f["traffic"]
    sides = list(t["outcomes"])
    rows = [
        [esc(o)] + [esc(count(t["outcomes"][s][o])) for s in sides] for o in t["outcomes"]["prod"]
    ]
    paired = t["paired"]
    for check in ("error", "timeout", "invalid"):
        p = paired[check]
        rows.append(
            [
                f"{esc(check)} rate (paired, n = {esc(count(p['n']))})",
                esc(pct(p["prod_rate"], 3)),
                esc(pct(p["cand_rate"], 3)),
            ]
            + ["—"] * (len(sides) - 2)
        )
    tiles = _tiles(
        [
            ("pairs stored", esc(count(t["pairs"]))),
            ("teed to the candidate", esc(count(t["teed"]))),
            ("shed", esc(count(t["outcomes"]["cand"]["shed"]))),
            ("skipped", esc(count(t["outcomes"]["cand"]["skipped"]))),
            (
                "outputs compared",
                esc(
                    f"{pct(t['coverage']['compared'] / t['coverage']['both_ok'])} of "
                    f"{count(t['coverage']['both_ok'])}"
                    if t["coverage"]["both_ok"]
                    else "none"
                ),
            ),
            (
                "pairs dropped",
                esc(count(t["spool_drops"]) if t["spool_drops"] is not None else "n/a"),
            ),
            ("pairs quarantined", esc(count(t.get("quarantined", 0)))),
        ]
    )
    note = f"Pairs dropped by proxies: {esc(t['spool_drops_note'])}."
    by_reason = t.get("quarantined_by_reason") or {}
    if by_reason:
        detail = ", ".join(f"{r} {count(n)}" for r, n in by_reason.items())
        note += f" Pairs refused by the comparator and kept in its quarantine: {esc(detail)}."
    table = html_table(["outcome"] + [esc(_SIDE.get(s, s)) for s in sides], rows)
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
            [q, esc(quantile_text(lat["prod"], q)), esc(quantile_text(lat["cand"], q)), esc(ratio)]
        )
    rows.append(
        ["completed / timeouts"]
        + [
            esc(f"{count(lat[s]['completed'])} / {count(lat[s]['censored'])}")
            for s in ("prod", "cand")
        ]
        + [""]
    )
    table = html_table(
        ["", "production", "candidate", "ratio cand/prod [interval, whole run]"], rows
    )
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
                    ("pairs compared (both ok)", esc(count(cls["n"]))),
                    ("top-1 disagreement", esc(pct(cls["disagreement_rate"]))),
                    ("JS distance > 0.1", esc(pct(cls["js_tail_rate"]))),
                    ("mean JS distance", esc(g(cls["js_mean"]))),
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
                [esc(k), esc(g(v) if isinstance(v, float) else count(v))]
                for k, v in d[task].items()
            ]
            parts.append(f"<h3>{label}</h3>" + html_table(["measure", "value"], rows))
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
            esc(f"{_SIDE.get(m['side'], m['side'])} {m['kind']}"),
            esc(count(m["n"])),
            esc(mib(m["min_bytes"])),
            esc(mib(m["max_bytes"])),
            esc(mib(m["last_bytes"])),
            esc(mib(m["limit_bytes"])),
        ]
        for m in f["memory"]
    ]
    table = html_table(["series", "samples", "min", "max", "last", "limit"], rows)
    return f"<section><h2>Memory</h2>{table}{_figure(plots, 'memory')}</section>"


def _pre(text: str | None, label: str = "") -> str:
    label = f"<span class='note'>{esc(label)}</span>" if label else ""
    if text is None:
        return f"{label}<span class='note'> not stored</span><br>"
    return f"{label}<pre>{esc(text)}</pre>"


def _divergent_html(f: dict[str, Any]) -> str:
    pairs = f["most_divergent"]
    if not pairs:
        return ""
    rows = []
    for p in pairs:
        classes = " → ".join("—" if c is None else str(c) for c in p["classes"])
        rows.append(
            [
                f"<code>{esc(p['request_id'])}</code><br><span class='note'>{esc(p['ts'])}<br>"
                f"{esc(p['route'])}</span>",
                esc(" / ".join(p["outcomes"])) + "<br>" + esc(classes),
                esc(g(p["divergence"])),
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
        + html_table(head, rows, num={2})
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
        rows.append([esc(label), esc(fmt(today)), esc(fmt(before)), esc(change)])
    head = ["measure", esc(f["day"]), esc(prev["day"]), "change"]
    return f"<section><h2>Compared with the previous day</h2>{html_table(head, rows)}</section>"


def render_html(f: dict[str, Any], plots: dict[str, str]) -> str:
    """The whole page. ``plots`` holds trusted SVG made by :mod:`reports.plots`; all else is escaped."""
    m = f["models"]
    title = f"shadowtee · {f['experiment']} · {f['day']}"
    sub = (
        f"Daily divergence report · {f['day']} ({f['tz']}: {f['start']} to {f['end']}) · "
        f"production {m['prod_version'] or '?'} vs candidate {m['cand_version'] or '?'}"
        f" · task {m['task'] or 'auto'}"
    )
    body = [f"<header><h1>{esc(f['experiment'])}</h1><p>{esc(sub)}</p></header>"]
    if f["empty"]:
        body.append(
            f"<section><div class='empty'>No traffic on this day.</div><p class='note' "
            f"style='text-align:center'>No pair of {esc(f['experiment'])} was stored between "
            f"{esc(f['start'])} and {esc(f['end'])}.</p></section>"
        )
        body.append(_verdict_html(f))
    else:
        body += [
            _verdict_html(f),
            _scorecard_html(f),
            _traffic_html(f),
            _latency_html(f, plots),
            _divergence_html(f, plots),
            segments_html(f),
            drift_html(f),
            _memory_html(f, plots),
            _divergent_html(f),
            _previous_html(f),
        ]
    body.append(
        f"<footer>{esc(f['schema'])} · built from {esc(len(f['hourly']))} hourly aggregates "
        f"and a bounded sample of pairs · experiment started {esc(m['started_at'])}</footer>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )


# -- JSON and Markdown ----------------------------------------------------------------------------
