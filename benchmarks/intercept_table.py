"""Turn the raw lines written by ./intercept into a markdown table: intercepted HTTPS, fwproxy
against mitmproxy.

usage: python3 intercept_table.py RAWFILE

The raw lines are those of ./run (parsed by table.py): `params key=value ...`, `timing ...`,
`LABEL metric value [unit]` once per round, `LABEL version|skipped|note|xxx_error ...`. Labels:
`direct` (the TLS origin without a proxy), `bump` (fwproxy intercepting, `[intercept] rules =
["bump all"]`), `mitmproxy` (intercepting with the same CA) and `splice` (fwproxy without
`[intercept]`: CONNECT tunnels). Metrics, for MODE `keepalive` (curl reuses its connections)
and `newconn` (one new connection, CONNECT and full TLS handshake per request):
`tls_MODE_rps`, `tls_MODE_cpu_ticks_per_1k` (the proxy's CPU), `tls_MODE_cpu_pct` (the share of
one core the proxy got meanwhile: the rest of the machine's load shows there), `tls_MODE_requests` and
`tls_MODE_connections` (what curl counted: the second shows whether connections were reused),
`tls_MODE_failed` (transfers that did not get a 200 with 1 KiB) and `tls_MODE_curl_error` (a note);
once, `https_requests_logged` (access log lines `GET https://...` of a fwproxy).

Each cell is the median over the rounds (min–max, spread), as in table.py; ratios are of the
medians. A skipped column keeps its place, each cell saying why in a word ("interception not
available" when the fwproxy of this checkout cannot intercept). Under the table the target of
issue 12 is checked: fwproxy intercepting serves at least 3× mitmproxy's keep-alive requests/s.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable

from table import (
    FLAG,
    FLAG_SPREAD_PCT,
    Raw,
    Summary,
    cell,
    fmt2,
    fmt_int,
    notes_lines,
    num,
    print_table,
    run_lines,
    summarize,
)
from table import ratio as ratio_cell

#: fwproxy intercepting must serve this many times mitmproxy's keep-alive requests/s (issue 12)
TARGET = 3.0
COLUMNS = ("direct", "bump", "mitmproxy", "splice")
HEAD = {
    "direct": "no proxy",
    "bump": "fwproxy intercepting",
    "mitmproxy": "mitmproxy intercepting",
    "splice": "fwproxy splicing",
}
RATIOS = (("bump", "mitmproxy"), ("bump", "splice"))
SHORT = {"bump": "fwproxy bump", "mitmproxy": "mitmproxy", "splice": "splice"}


def figure(raw: Raw, label: str, key: str) -> Summary | None:
    return summarize(raw.values.get(label, {}).get(key, []))


def rows(params: dict[str, str]) -> list[tuple[str, str, Callable[[float], str]]]:
    """(metric, title, format) for each row of the table."""
    conns = params.get("conns", "?")
    return [
        ("tls_keepalive_rps", f"HTTPS 1 KiB GET, keep-alive, {conns} conns (req/s) ↑", fmt_int),
        ("tls_keepalive_cpu_ticks_per_1k", "proxy CPU per 1,000 requests (ticks of 10 ms) ↓", fmt2),
        ("tls_keepalive_cpu_pct", "proxy CPU used meanwhile (% of one core)", fmt_int),
        (
            "tls_newconn_rps",
            f"new connection + full TLS handshake per request, {conns} conns (req/s) ↑",
            fmt_int,
        ),
        ("tls_newconn_cpu_ticks_per_1k", "proxy CPU per 1,000 handshakes (ticks of 10 ms) ↓", fmt2),
    ]


def skipped_word(reason: str) -> str:
    """What a skipped column's cells say: the reason up to its first parenthesis."""
    return reason.split("(")[0].strip() or "skipped"


def verdict(raw: Raw) -> str | None:
    """The target of issue 12, read from the medians (None when a side was not measured)."""
    a, b = figure(raw, "bump", "tls_keepalive_rps"), figure(raw, "mitmproxy", "tls_keepalive_rps")
    if a is None or b is None or b.median <= 0:
        return None
    r = a.median / b.median
    pairs = zip(
        raw.values["bump"]["tls_keepalive_rps"],
        raw.values["mitmproxy"]["tls_keepalive_rps"],
        strict=False,
    )
    rounds = [x / y for x, y in ((num(p), num(q)) for p, q in pairs) if x is not None and y]
    met = "met" if r >= TARGET else "NOT met"
    flag = a.flagged or b.flagged
    return (
        f"Keep-alive: fwproxy intercepting / mitmproxy = {r:.2f}× (ratio of the medians); per "
        f"round: {', '.join(f'{x:.2f}' for x in rounds)} (their median "
        f"{statistics.median(rounds) if rounds else float('nan'):.2f}); target ≥ {TARGET:.0f}×: "
        f"{met}" + (f" ({FLAG} a spread is over {FLAG_SPREAD_PCT:.0f}%: re-run)" if flag else "")
    )


def handshakes(raw: Raw) -> str | None:
    """New handshakes per second of the two intercepting proxies, as issue 12 asks."""
    parts = []
    for label in ("bump", "mitmproxy"):
        s = figure(raw, label, "tls_newconn_rps")
        if s is not None:
            parts.append(f"{HEAD[label]} {fmt_int(s.median)}/s")
    if not parts:
        return None
    return (
        "New handshakes per second (each request a new connection, CONNECT and full TLS "
        "handshake with a cached leaf certificate): " + ", ".join(parts) + "."
    )


def check_notes(raw: Raw) -> list[str]:
    """What would make a figure meaningless: failures, connections not reused, or reused."""
    out = []
    for label in COLUMNS:
        d = raw.values.get(label, {})
        conns = num(raw.params.get("conns"))
        for mode, what in (("keepalive", "keep-alive"), ("newconn", "new-connection")):
            failed = sum(num(v) or 0 for v in d.get(f"tls_{mode}_failed", []))
            if failed:
                out.append(
                    f"{label}: {failed:.0f} {what} requests without a 200 and 1 KiB over the rounds"
                )
            made = [num(v) or 0 for v in d.get(f"tls_{mode}_connections", [])]
            done = [num(v) or 0 for v in d.get(f"tls_{mode}_requests", [])]
            if mode == "keepalive" and conns and any(c > 2 * conns for c in made):
                out.append(
                    f"{label}: the keep-alive load opened {', '.join(f'{c:.0f}' for c in made)} "
                    f"connections in the rounds for {conns:.0f} concurrent: they were not reused"
                )
            if mode == "newconn" and any(c < 0.9 * r for c, r in zip(made, done, strict=False)):
                out.append(
                    f"{label}: the new-connection load reused connections "
                    f"({', '.join(f'{c:.0f}' for c in made)} for "
                    f"{', '.join(f'{r:.0f}' for r in done)} requests)"
                )
        logged = d.get("https_requests_logged", [])
        if label == "bump" and logged and not num(logged[-1]):
            out.append("bump: no `GET https://` lines in its access log: did it intercept?")
        if label == "splice" and logged and num(logged[-1]):
            out.append(f"splice: {logged[-1]} `GET https://` lines in its access log: it bumped")
    return out


def render(raw: Raw) -> str:
    rounds = int(raw.params.get("rounds", "1"))
    cols = [c for c in COLUMNS if c in raw.labels or c in raw.skipped]
    pairs = [(a, b) for a, b in RATIOS if a in cols and b in cols]
    head = ["figure"] + [HEAD[c] for c in cols] + [f"{SHORT[a]} / {SHORT[b]}" for a, b in pairs]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, title, fmt in rows(raw.params):
        sums = {c: figure(raw, c, key) for c in cols}
        cells = [title]
        for c in cols:
            if c in raw.skipped and sums[c] is None:
                cells.append(skipped_word(raw.skipped[c]))
            else:
                cells.append(cell(sums[c], fmt, rounds, False))
        cells += [ratio_cell(sums[a], sums[b]) for a, b in pairs]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    out.append(
        f"Each cell: the median over {rounds} interleaved rounds (min–max, spread = (max − min) / "
        f"median); {FLAG} marks a spread over {FLAG_SPREAD_PCT:.0f}% and what rests on it. Ratios "
        "are of the medians. Load: curl --parallel through CONNECT for "
        f"{raw.params.get('duration', '?')} s per figure, proxy and round."
    )
    lines = [v for v in (verdict(raw), handshakes(raw)) if v]
    if lines:
        out.append("")
        out.extend(f"- {v}" for v in lines)
    out += run_lines(raw, HEAD)
    notes = raw.notes + check_notes(raw)
    notes += [f"{HEAD.get(k, k)}: skipped — {v}" for k, v in raw.skipped.items()]
    out += notes_lines(notes)
    return "\n".join(out)


if __name__ == "__main__":
    print_table(render, sys.argv[1])
