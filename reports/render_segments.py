"""The HTML page's segment section (table and segment × hour heatmap) and the window's drift."""

from __future__ import annotations

from typing import Any

from reports.fmt import count, esc, g, html_table, interval, pct

__all__ = ["drift_html", "segments_html"]


def _heat_color(rate: float | None, top: float) -> str:
    if rate is None:
        return "#f4f6f8"
    x = 0.0 if top <= 0 else min(1.0, rate / top)
    # white (agreement) to red (the day's highest disagreement)
    return f"rgb(255,{round(255 - 150 * x)},{round(255 - 170 * x)})"


def segments_html(f: dict[str, Any]) -> str:
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
                    f"<code>{esc(r['value'])}</code>",
                    esc(count(r["pairs"])),
                    esc(pct(r["top1_disagreement"])),
                    esc(pct(r["error_delta"], 3)),
                    f"<code>{esc(w['id'])}</code>" if w else "—",
                    f'<span class="badge {esc(status.lower())}">{esc(status.upper())}</span>',
                    esc(g(w["estimate"]) if w else "—"),
                    esc(interval(w["lower"], w["upper"]) if w else "—"),
                    esc(g(w["margin"]) if w else "—"),
                    esc(g(w["distance"]) if w else "—"),
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
        parts.append(f"<h3>{esc(d['dimension'])}</h3>")
        parts.append(html_table(head, rows, num={1, 2, 3, 6, 7, 8, 9}))
        heat = d["heatmap"]
        rates = [x for row in heat["cells"] for x in row if x is not None]
        top = max(rates, default=0.0)
        hours = [h[11:13] for h in heat["hours"]]
        cells = "".join(
            f"<tr><th><code>{esc(v)}</code></th>"
            + "".join(
                f'<td class="heat" style="background:{_heat_color(x, top)}" '
                f'title="{esc(v)} {esc(h)}: {esc(pct(x))} of {esc(count(n))} pairs"></td>'
                for x, n, h in zip(row, nrow, heat["hours"], strict=True)
            )
            + "</tr>"
            for v, row, nrow in zip(heat["values"], heat["cells"], heat["pairs"], strict=True)
        )
        head_row = "<tr><th></th>" + "".join(f"<th class='num'>{esc(h)}</th>" for h in hours)
        parts.append(
            f"<table class='heatmap' aria-label='top-1 disagreement by segment and hour'>"
            f"{head_row}</tr>{cells}</table>"
            f"<p class='note'>Heatmap: top-1 disagreement per segment (rows) and UTC hour "
            f"(columns), white 0 to red {esc(pct(top))}. Segments are the top "
            f"{len(heat['values'])} by pairs, the rest as (other); each critical check runs "
            f"per segment at α/(k·dimensions) and only its FAIL counts (a REJECT).</p>"
        )
    parts.append("</section>")
    return "".join(parts)


def drift_html(f: dict[str, Any]) -> str:
    d = f.get("drift")
    if not d:
        return ""
    mix = d["prediction_mix"]
    rows = [
        [
            f"production's prediction mix (PSI of {mix.get('of', 'classes')})",
            esc(g(mix["psi"])),
            esc(mix["level"] or "not enough pairs"),
            esc(" → ".join(count(n) for n in mix["n"])),
        ]
    ]
    rows += [
        [
            f"<code>{esc(x['feature'])}</code>",
            esc(g(x["psi"])),
            "",
            esc(" → ".join(map(count, x["n"]))),
        ]
        for x in d["features"]
    ]
    warn = "".join(f"<p class='drift-warning'><b>Warning:</b> {esc(w)}</p>" for w in d["warnings"])
    note = (
        "Day over day: this day against the day before (input features over a bounded sample of "
        f"stored request bodies, {d['features_compared']} compared). PSI < 0.1 stable, < 0.25 "
        "moderate, else large. Drift informs; it does not change the decision."
    )
    table = html_table(["what", "PSI", "level", "n (before → day)"], rows, num={1})
    return f"<section id='drift'><h2>Drift of the window</h2>{warn}{table}<p class='note'>{esc(note)}</p></section>"
