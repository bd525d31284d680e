"""Medians, ratios and the printed table for the proxy benchmark (pure functions, no I/O)."""

from __future__ import annotations

import math
import statistics
from typing import Any

__all__ = ["render_table", "summarise"]

METRICS = (
    "rps",
    "cpu_s_per_10k",
    "cpu_s_per_10k_at_rate",
    "cpu_user_s_per_10k",
    "cpu_system_s_per_10k",
    "p50_ms",
    "p99_ms",
    "delivered_share",
    "peak_rss_mib",
    "foreign_cpu_share",
    "server_core_idle_share",
)
PROXIES = ("nginx", "handwritten", "shadowtee")


def _median(values: list[float]) -> float | None:
    clean = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(clean) if clean else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarise(runs: list[dict[str, Any]], configs: list[tuple[str, str]]) -> dict[str, Any]:
    """Per-configuration medians over runs, shadowtee's accounting, and the ratios the issue asks for."""
    table: dict[str, dict[str, Any]] = {}
    for target, cand in configs:
        mine = [r for r in runs if r["target"] == target and r["candidate"] == cand]
        ok = [r for r in mine if "error" not in r]
        row: dict[str, Any] = {"target": target, "candidate": cand, "runs": len(ok)}
        row["errors"] = [r["error"] for r in mine if "error" in r]
        for metric in METRICS:
            row[metric] = _median([r.get(metric) for r in ok])  # type: ignore[misc]
        row["wrk_timeouts"] = _median([r["wrk"]["timeout"] for r in ok if "wrk" in r])
        row["paced_failed"] = _median(
            [r["paced"]["timeouts"] + r["paced"]["errors"] for r in ok if "paced" in r]
        )
        digests = sorted({r["proxy_src_sha256"] for r in ok if "proxy_src_sha256" in r})
        if digests:
            row["proxy_src_sha256"] = digests
        accts = [r["shadowtee"] for r in ok if "shadowtee" in r]
        if accts:
            row["accounting"] = {
                "balanced_all_runs": all(a["balanced"] for a in accts),
                "comparator_matches_all_runs": all(a.get("comparator_matches") for a in accts),
                "teed": _median([a["teed"] for a in accts]),
                "teed_source": accts[0]["teed_source"],
                "outcomes": {
                    k: _median([a["outcomes"].get(k, 0.0) for a in accts])
                    for k in sorted({k for a in accts for k in a["outcomes"]})
                },
                "delivered_share": _median([a["delivered_share"] for a in accts]),
                "comparator_pairs": _median([a["comparator_pairs"] for a in accts]),
                "comparator_unique": _median([a["comparator_unique"] for a in accts]),
            }
        ladders = [r["ladder"] for r in ok if "ladder" in r]
        if ladders:
            row["ladder"] = {
                rate: {
                    m: _median([lad[rate][m] for lad in ladders if rate in lad])
                    for m in ("p50_ms", "p99_ms", "p999_ms", "max_ms", "failed")
                }
                for rate in ladders[0]
            }
        table[f"{target}/{cand}"] = row

    def get(target: str, cand: str, metric: str) -> float | None:
        row = table.get(f"{target}/{cand}")
        return row.get(metric) if row else None

    ratios: dict[str, Any] = {}
    for proxy in PROXIES:
        if f"{proxy}/healthy" not in table:
            continue
        r: dict[str, float | None] = {}
        for cand in ("slow", "hung"):
            r[f"rps_{cand}_vs_healthy"] = _ratio(
                get(proxy, cand, "rps"), get(proxy, "healthy", "rps")
            )
            r[f"p99_{cand}_vs_healthy"] = _ratio(
                get(proxy, cand, "p99_ms"), get(proxy, "healthy", "p99_ms")
            )
        acct = table.get(f"{proxy}/slow", {}).get("accounting")
        r["delivered_share_slow"] = (acct or {}).get("delivered_share") or get(
            proxy, "slow", "delivered_share"
        )
        ratios[proxy] = r
    if "shadowtee/healthy" in table and "handwritten/healthy" in table:
        ratios["shadowtee_vs_handwritten"] = {
            "rps": _ratio(get("shadowtee", "healthy", "rps"), get("handwritten", "healthy", "rps")),
            "cpu": _ratio(
                get("shadowtee", "healthy", "cpu_s_per_10k"),
                get("handwritten", "healthy", "cpu_s_per_10k"),
            ),
        }
    if "shadowtee/healthy" in table and "nginx/healthy" in table:
        ours, theirs = get("shadowtee", "healthy", "p99_ms"), get("nginx", "healthy", "p99_ms")
        ratios["shadowtee_vs_nginx"] = {
            "rps": _ratio(get("shadowtee", "healthy", "rps"), get("nginx", "healthy", "rps")),
            "cpu": _ratio(
                get("shadowtee", "healthy", "cpu_s_per_10k"),
                get("nginx", "healthy", "cpu_s_per_10k"),
            ),
            "p99_added_ms": None if ours is None or theirs is None else ours - theirs,
        }
    if "baseline/healthy" in table and "shadowtee/healthy" in table:
        ratios["shadowtee_vs_baseline"] = {
            cand: {
                metric: _ratio(get("shadowtee", cand, metric), get("baseline", cand, metric))
                for metric in ("rps", "cpu_s_per_10k", "cpu_s_per_10k_at_rate", "p99_ms")
            }
            for cand in ("healthy", "slow", "hung")
            if f"baseline/{cand}" in table and f"shadowtee/{cand}" in table
        }
    return {"table": table, "ratios": ratios}


LADDER_METRICS = (("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9"), ("max_ms", "max"))


def render_ladder(summary: dict[str, Any]) -> list[str]:
    """Latency at each fixed rate, and what each proxy adds over direct access at that rate."""
    rows = [r for r in summary["table"].values() if r.get("ladder")]
    if not rows:
        return []
    direct = summary["table"].get("direct/-", {}).get("ladder") or {}
    lines = [
        "",
        "latency at fixed rates, ms (open loop; in brackets: added over direct at that rate):",
    ]
    for row in rows:
        for rate, m in row["ladder"].items():
            cells = []
            for key, label in LADDER_METRICS:
                value = m.get(key)
                base = (direct.get(rate) or {}).get(key)
                added = (
                    f" [{value - base:+.1f}]"
                    if value is not None and base is not None and row["target"] != "direct"
                    else ""
                )
                cells.append(f"{label} {_fmt(value, '.1f')}{added}")
            lines.append(
                f"  {row['target']:<11} {row['candidate']:<8} {float(rate):>6.0f} req/s  "
                + ", ".join(cells)
                + f", failed {_fmt(m.get('failed'), '.0f')}"
            )
    return lines


def ladder_svg(summary: dict[str, Any], metric: str = "p99_ms") -> str | None:
    """A small SVG plot of ``metric`` against the rate, one line per configuration."""
    series = {
        key: [(float(rate), m.get(metric)) for rate, m in row["ladder"].items()]
        for key, row in summary["table"].items()
        if row.get("ladder")
    }
    points = [(x, y) for s in series.values() for x, y in s if y is not None]
    if not points:
        return None
    width, height, pad = 640, 400, 50
    xmax = max(x for x, _ in points) * 1.05
    ymax = max(y for _, y in points) * 1.1 or 1.0

    def xy(x: float, y: float) -> str:
        px = pad + x / xmax * (width - 2 * pad)
        py = height - pad - y / ymax * (height - 2 * pad)
        return f"{px:.1f},{py:.1f}"

    colours = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<text x="{pad}" y="20">{metric.replace("_ms", "")} latency (ms) against the fixed '
        "rate (req/s)</text>",
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" '
        'stroke="black"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="black"/>',
        f'<text x="{width - pad}" y="{height - pad + 30}" text-anchor="end">{xmax:.0f}</text>',
        f'<text x="{pad - 5}" y="{pad}" text-anchor="end">{ymax:.1f}</text>',
    ]
    for i, (key, s) in enumerate(sorted(series.items())):
        colour = colours[i % len(colours)]
        pts = " ".join(xy(x, y) for x, y in s if y is not None)
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{pts}"/>')
        out.append(f'<text x="{width - pad - 150}" y="{pad + 16 * i}" fill="{colour}">{key}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _fmt(value: float | None, spec: str) -> str:
    width = "".join(ch for ch in spec.split(".")[0] if ch.isdigit())
    return ("-" if value is None else format(value, spec)).rjust(int(width or 0))


TARGETS_GOALS = (
    (
        "shadowtee_vs_nginx",
        "rps",
        "throughput, shadowtee / nginx mirror (healthy)",
        ">= 1.0",
        1.0,
        True,
    ),
    (
        "shadowtee_vs_nginx",
        "cpu",
        "CPU per 10k, shadowtee / nginx mirror (healthy)",
        "<= 1.1",
        1.1,
        False,
    ),
    (
        "shadowtee_vs_nginx",
        "p99_added_ms",
        "p99 at the fixed rate, shadowtee - nginx, ms (healthy)",
        "<= 1.0",
        1.0,
        False,
    ),
    (
        "shadowtee_vs_handwritten",
        "rps",
        "throughput, shadowtee / hand-written (healthy)",
        ">= 2.0",
        2.0,
        True,
    ),
    (
        "shadowtee_vs_handwritten",
        "cpu",
        "CPU per 10k, shadowtee / hand-written (healthy)",
        "<= 0.5",
        0.5,
        False,
    ),
    (
        "shadowtee",
        "rps_slow_vs_healthy",
        "shadowtee throughput, slow / healthy",
        ">= 0.95",
        0.95,
        True,
    ),
    (
        "shadowtee",
        "rps_hung_vs_healthy",
        "shadowtee throughput, hung / healthy",
        ">= 0.95",
        0.95,
        True,
    ),
    (
        "shadowtee",
        "p99_slow_vs_healthy",
        "shadowtee p99 @rate, slow / healthy",
        "<= 1.2",
        1.2,
        False,
    ),
    (
        "shadowtee",
        "p99_hung_vs_healthy",
        "shadowtee p99 @rate, hung / healthy",
        "<= 1.2",
        1.2,
        False,
    ),
    (
        "shadowtee",
        "delivered_share_slow",
        "shadowtee delivered share, slow candidate",
        ">= 0.99",
        0.99,
        True,
    ),
)


def render_table(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    s = meta["settings"]
    lines = [
        "",
        f"proxy benchmark  {meta['started']}  {meta['machine']['cpus']} cores "
        f"({meta['machine']['cpu_model']}), medians of {s['runs']} interleaved run(s)",
        f"max throughput: wrk -t1 -c{s['connections']} {s['duration']:g} s; latency: open loop at "
        f"{s['rate']:g} req/s for {s['rate_duration']:g} s; load and fake comparator on core 0, "
        "proxy and fake upstreams on core 1",
        "",
        f"{'target':<12} {'candidate':<9} {'max req/s':>9} {'CPU-s/10k':>9} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'delivered':>9} {'RSS MiB':>8} {'lost':>6} {'other':>6}",
    ]
    for row in summary["table"].values():
        lost = (row.get("paced_failed") or 0) + (row.get("wrk_timeouts") or 0)
        share = (row.get("accounting") or {}).get("delivered_share") or row.get("delivered_share")
        lines.append(
            f"{row['target']:<12} {row['candidate']:<9} {_fmt(row['rps'], '9.0f')} "
            f"{_fmt(row['cpu_s_per_10k'], '9.2f')} {_fmt(row['p50_ms'], '8.1f')} {_fmt(row['p99_ms'], '8.1f')} "
            f"{_fmt(share, '9.1%')} {_fmt(row['peak_rss_mib'], '8.0f')} {lost:6.0f} "
            f"{_fmt(row.get('foreign_cpu_share'), '6.0%')}"
            + (f"  errors: {'; '.join(row['errors'])[:120]}" if row["errors"] else "")
        )
    lines.append(
        "  (lost = client requests that timed out or failed: paced + wrk; delivered = candidate"
    )
    lines.append(
        "   completed / requests sent at the fixed rate; for shadowtee its ok outcomes / teed;"
    )
    lines.append(
        "   other = share of the server core used by processes outside the benchmark during"
    )
    lines.append(
        "   wrk: harmless when the proxy left the core idle, a distortion when it was busy;"
    )
    lines.append(
        "   CPU-s/10k = the proxy's CPU from the start of wrk until the tees, and for shadowtee"
    )
    lines.append("   the shipping, of those requests were done, per 10k requests)")
    split = [
        f"  {row['target']:<12} {row['candidate']:<9} {_fmt(row.get('cpu_user_s_per_10k'), '.2f')}"
        f" user + {_fmt(row.get('cpu_system_s_per_10k'), '.2f')} system; at the fixed rate "
        f"{_fmt(row.get('cpu_s_per_10k_at_rate'), '.2f')}"
        for row in summary["table"].values()
        if row.get("cpu_user_s_per_10k") is not None
    ]
    if split:
        lines += [
            "",
            "CPU-s/10k, the proxy's user and system (kernel) time; and at the fixed rate:",
        ]
        lines += split
    accounted = [(k, r["accounting"]) for k, r in summary["table"].items() if r.get("accounting")]
    if accounted:
        lines += ["", "shadowtee accounting over the fixed-rate phase (medians):"]
        for key, a in accounted:
            parts = " + ".join(f"{k} {v:.0f}" for k, v in a["outcomes"].items())
            mark = "balanced" if a["balanced_all_runs"] else "NOT BALANCED"
            mark += (
                ", comparator = teed"
                if a["comparator_matches_all_runs"]
                else ", comparator != teed in some run"
            )
            lines.append(
                f"  {key:<20} teed {_fmt(a['teed'], '.0f')} = {parts or '-'}  [{mark}]  "
                f"comparator got {_fmt(a['comparator_pairs'], '.0f')} pairs "
                f"({_fmt(a['comparator_unique'], '.0f')} distinct)"
            )
    lines += render_ladder(summary)
    ratios = summary["ratios"]
    lines += ["", "ratios:"]
    for proxy in ("nginx", "handwritten", "shadowtee"):
        r = ratios.get(proxy)
        if r:
            lines.append(
                f"  {proxy:<12} throughput slow/healthy {_fmt(r['rps_slow_vs_healthy'], '.2f')}, "
                f"hung/healthy {_fmt(r['rps_hung_vs_healthy'], '.2f')}; p99 slow/healthy "
                f"{_fmt(r['p99_slow_vs_healthy'], '.2f')}, hung/healthy {_fmt(r['p99_hung_vs_healthy'], '.2f')}; "
                f"delivered (slow) {_fmt(r['delivered_share_slow'], '.1%')}"
            )
    against = ratios.get("shadowtee_vs_baseline")
    if against:
        lines += ["", "this tree / baseline (same machine, interleaved runs):"]
        for cand, r in against.items():
            lines.append(
                f"  {cand:<8} throughput {_fmt(r['rps'], '.3f')}, CPU-s/10k "
                f"{_fmt(r['cpu_s_per_10k'], '.3f')}, CPU-s/10k at the fixed rate "
                f"{_fmt(r['cpu_s_per_10k_at_rate'], '.3f')}, p99 {_fmt(r['p99_ms'], '.3f')}"
            )
    if "shadowtee" in ratios:
        lines += ["", "shadowtee against the issue's targets:"]
        for group, key, label, goal, bound, higher in TARGETS_GOALS:
            value = ratios.get(group, {}).get(key)
            verdict = (
                "-"
                if value is None
                else ("met" if (value >= bound if higher else value <= bound) else "MISSED")
            )
            lines.append(f"  {label:<50} {_fmt(value, '6.2f')}  (target {goal})  {verdict}")
    noisy = [
        f"{k} ({r['foreign_cpu_share']:.0%})"
        for k, r in summary["table"].items()
        if (r.get("foreign_cpu_share") or 0.0) > 0.10
    ]
    if noisy:
        lines.append(
            "note: other processes used >10% of the server core during: "
            + ", ".join(noisy)
            + "; check those rows against a quiet rerun"
        )
    digests = {
        d
        for r in summary["table"].values()
        if r["target"] != "baseline"  # another revision: its source differs by design
        for d in r.get("proxy_src_sha256", [])
    }
    if len(digests) > 1:
        lines.append(
            f"WARNING: proxy/ source changed during the run ({', '.join(sorted(digests))})"
        )
    for note in meta.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)
