"""Turn the raw lines written by ./run into one markdown table of medians, spreads and ratios.

usage: python3 table.py RAWFILE

Raw line forms: `params key=value ...`; `timing round N S s`, `timing once S s`,
`timing total S s`; `LABEL metric value [unit]` (a per-round metric appears once per round, in
round order); `LABEL skipped reason...`; `LABEL version text...`; `LABEL note text...` (also
`LABEL xxx_error ...` and `LABEL xxx_note ...`); `LABEL relay_big_partial BYTES bytes in round N`.
LABEL `direct` is the "no proxy" column; `fwproxy@REV` columns are other revisions of fwproxy.

Each cell is the median of a figure over the rounds, then (min–max, spread) where the spread is
(max − min) / median; a spread above FLAG_SPREAD_PCT is flagged, and so is every ratio that rests
on a flagged figure. Ratios are of medians.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

FLAG_SPREAD_PCT = 15.0
FLAG = "⚠"
ORDER = [
    "direct",
    "fwproxy",
    "fwproxy-compiled",
    "fwproxy-workers",
    "squid",
    "tinyproxy",
    "proxy.py",
    "mitmproxy",
]
HEAD = {
    "direct": "no proxy",
    "fwproxy-compiled": "fwproxy compiled (mypyc)",
    "fwproxy-workers": "fwproxy --workers auto",
}
# (numerator, denominator) column pairs shown as ratios, when both were measured
PEER_RATIOS = [
    ("fwproxy", "squid"),
    ("fwproxy", "proxy.py"),
    ("fwproxy", "mitmproxy"),
    ("fwproxy-compiled", "fwproxy"),
    ("fwproxy-compiled", "squid"),
    ("fwproxy-compiled", "proxy.py"),
    ("fwproxy-workers", "squid"),
]


@dataclass
class Raw:
    """Everything ./run wrote, grouped by column."""

    params: dict[str, str] = field(default_factory=dict)
    values: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    full: dict[str, dict[str, str]] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    partial: dict[str, dict[str, int]] = field(default_factory=dict)
    timing: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Summary:
    """A figure over the rounds: median, range, sample count, and whether its spread is too wide."""

    median: float
    low: float
    high: float
    count: int

    @property
    def spread_pct(self) -> float | None:
        """(max − min) as a percentage of the median; None when the median is 0."""
        if self.median == 0:
            return None if self.high != self.low else 0.0
        return (self.high - self.low) / abs(self.median) * 100

    @property
    def flagged(self) -> bool:
        if self.count < 2:
            return False
        s = self.spread_pct
        return s is None or s > FLAG_SPREAD_PCT


def num(v: str | None) -> float | None:
    try:
        x = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if x != x else x


def summarize(values: Iterable[str]) -> Summary | None:
    xs = [x for x in (num(v) for v in values) if x is not None]
    if not xs:
        return None
    return Summary(statistics.median(xs), min(xs), max(xs), len(xs))


def parse(lines: Iterable[str]) -> Raw:
    raw = Raw()
    for line in lines:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "params":
            raw.params.update(p.split("=", 1) for p in parts[1:] if "=" in p)  # type: ignore[misc]
            continue
        if parts[0] == "timing" and len(parts) >= 3:
            what = parts[1] if parts[1] != "round" else f"round {parts[2]}"
            raw.timing[what] = parts[-2] if parts[1] == "round" else parts[2]
            continue
        if len(parts) < 2:
            continue
        label, key, rest = parts[0], parts[1], " ".join(parts[2:])
        if key == "skipped":
            raw.skipped[label] = rest
        elif key == "version":
            raw.versions[label] = rest
        elif key == "note" or key.endswith("_error") or key.endswith("_note"):
            raw.notes.append(f"{label}: {key.replace('_', ' ')} {rest}".strip())
        elif key.endswith("_partial"):
            raw.partial.setdefault(label, {})
            raw.partial[label][key] = raw.partial[label].get(key, 0) + 1
        else:
            raw.values.setdefault(label, {}).setdefault(key, []).append(
                parts[2] if len(parts) > 2 else ""
            )
            raw.full.setdefault(label, {})[key] = rest
            if label not in raw.labels:
                raw.labels.append(label)
    return raw


def columns(raw: Raw) -> list[str]:
    def rank(c: str) -> tuple[int, int]:
        if c.startswith("fwproxy@"):
            return (ORDER.index("fwproxy"), 1 + raw.labels.index(c))
        return (ORDER.index(c), 0) if c in ORDER else (len(ORDER), raw.labels.index(c))

    return sorted(raw.labels, key=rank)


def fmt_int(x: float) -> str:
    return f"{x:,.0f}"


def fmt2(x: float) -> str:
    return f"{x:,.2f}"


def fmt1(x: float) -> str:
    return f"{x:,.1f}"


def cell(s: Summary | None, fmt: Callable[[float], str], rounds: int, once: bool) -> str:
    if s is None:
        return "—"
    text = fmt(s.median)
    if once or s.count == 1:
        return text + ("" if once else " (n=1)")
    sp = s.spread_pct
    parts = [f"{fmt(s.low)}–{fmt(s.high)}", "—%" if sp is None else f"{sp:.0f}%"]
    if s.count != rounds:
        parts.append(f"n={s.count}")
    return f"{text} ({', '.join(parts)})" + (f" {FLAG}" if s.flagged else "")


def ratio(a: Summary | None, b: Summary | None) -> str:
    if a is None or b is None:
        return "—"
    if b.median == 0:
        return "—" if a.median == 0 else "∞"
    r = a.median / b.median
    text = f"{r:.2f}×" if r >= 0.1 or r == 0 else f"{r:.2g}×"
    return text + (f" {FLAG}" if a.flagged or b.flagged else "")


def rows(params: dict[str, str]) -> list[tuple[str, str, Callable[[float], str], bool]]:
    """(metric, title, format, measured once) for each row of the table."""
    size = params.get("size", "1GiB").replace("GiB", " GiB").replace("MiB", " MiB")
    tunnels, slow = params.get("tunnels", "?"), params.get("slow", "?")
    return [
        ("relay_keepalive_rps", "small GET, keep-alive, 50 conns (req/s) ↑", fmt_int, False),
        ("relay_keepalive_p50_ms", "latency p50 (ms) ↓", fmt2, False),
        ("relay_keepalive_p99_ms", "latency p99 (ms) ↓", fmt2, False),
        (
            "relay_keepalive_cpu_ticks_per_1k",
            "proxy CPU per 1,000 requests (ticks of 10 ms) ↓",
            fmt2,
            False,
        ),
        ("relay_newconn_rps", "small GET, new connection per request (req/s) ↑", fmt_int, False),
        ("relay_big_MBps", f"{size} through the HTTP relay (MB/s) ↑", fmt_int, False),
        ("tunnel_big_MBps", f"{size} through a CONNECT tunnel (MB/s) ↑", fmt_int, False),
        (
            "rss_per_tunnel_kib",
            f"RSS per idle CONNECT tunnel, {tunnels} tunnels (KiB), once ↓",
            fmt1,
            True,
        ),
        (
            "slow_reader_rss_growth_kib",
            f"RSS growth, {size} relayed to a slow reader for {slow} s (KiB), once ↓",
            fmt_int,
            True,
        ),
    ]


def ratio_pairs(cols: list[str]) -> list[tuple[str, str]]:
    pairs = [(a, b) for a, b in PEER_RATIOS if a in cols and b in cols]
    pairs += [("fwproxy", c) for c in cols if c.startswith("fwproxy@") and "fwproxy" in cols]
    return pairs


def partial_notes(raw: Raw, c: str, rounds: int) -> list[str]:
    """Notes on big downloads that did not finish in time."""
    size = raw.params.get("size", "?").replace("GiB", " GiB").replace("MiB", " MiB")
    limit = raw.params.get("big_timeout", "?")
    out = []
    relay = raw.partial.get(c, {}).get("relay_big_partial", 0)
    if relay:
        runs = len(raw.values.get(c, {}).get("relay_big_MBps", []))
        out.append(
            f"{c}: the {size} relay did not finish in {limit} s in {relay} of {runs} rounds; "
            "MB/s is over what arrived"
            + (" (not asked again after round 1)" if runs < rounds and relay == runs else "")
        )
    tunnel = raw.partial.get(c, {}).get("tunnel_big_partial", 0)
    if tunnel:
        out.append(f"{c}: a {size} tunnel download did not finish in {limit} s in {tunnel} rounds")
    return out


def counter_notes(raw: Raw, c: str) -> list[str]:
    """Notes on wrk/ab errors and on tunnels the proxy closed, summed over the rounds."""
    out = []
    d = raw.values.get(c, {})
    closed = num((d.get("tunnels_closed_by_proxy") or [None])[-1])
    if closed:
        out.append(
            f"{c}: {closed:.0f} of the idle tunnels were already closed when RSS was read "
            f"(opening them took {(d.get('tunnels_open_seconds') or ['?'])[-1]} s): "
            "RSS per tunnel is meaningless"
        )
    for k, what in (
        ("relay_keepalive_non2xx", "non-2xx responses (wrk)"),
        ("relay_keepalive_socket_errors", "socket errors (wrk)"),
        ("relay_newconn_failed", "failed requests (ab)"),
        ("relay_newconn_non2xx", "non-2xx responses (ab)"),
    ):
        total = sum(num(v) or 0 for v in d.get(k, []))
        if not total:
            continue
        note = f"{c}: {total:.0f} {what} over the rounds"
        if k == "relay_keepalive_socket_errors":
            rest = raw.full[c][k]
            note += f" (last round: {rest})"
            nonread = "connect 0 read" in rest and "write 0 timeout 0" in rest
            if nonread and not sum(num(v) or 0 for v in d.get("relay_keepalive_non2xx", [])):
                note += (
                    ": read errors alone mean the proxy closed the client connection "
                    "after each response (no keep-alive), so wrk reconnected"
                )
        out.append(note)
    return out


def render(raw: Raw) -> str:
    cols = columns(raw)
    rounds = int(raw.params.get("rounds", "1"))
    pairs = ratio_pairs(cols)
    head = (
        ["figure"] + [HEAD.get(c, c) for c in cols] + [f"{HEAD.get(a, a)} / {b}" for a, b in pairs]
    )
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    any_flag = False
    for key, title, fmt, once in rows(raw.params):
        sums = {c: summarize(raw.values.get(c, {}).get(key, [])) for c in cols}
        cells = [title]
        for c in cols:
            text = cell(sums[c], fmt, rounds, once)
            if key == "relay_big_MBps" and raw.partial.get(c, {}).get("relay_big_partial"):
                text += " (partial)"
            if key == "tunnel_big_MBps" and raw.partial.get(c, {}).get("tunnel_big_partial"):
                text += " (partial)"
            closed = raw.values.get(c, {}).get("tunnels_closed_by_proxy", ["0"])
            if key == "rss_per_tunnel_kib" and num(closed[-1]):
                text += " (!)"
            any_flag = any_flag or FLAG in text
            cells.append(text)
        cells += [ratio(sums[a], sums[b]) for a, b in pairs]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    out.append(
        f"Each cell: the median over {rounds} interleaved rounds (min–max, spread = (max − min) / "
        f"median); {FLAG} marks a spread over {FLAG_SPREAD_PCT:.0f}% and every ratio resting on "
        'one: re-run before quoting it. Rows marked "once" are measured once per proxy, after '
        "the rounds. ↑ higher is better, ↓ lower is better; a ratio is the first column's median "
        "divided by the second's (> 1 is better for ↑ rows, worse for ↓ rows). Only ratios from "
        "one run mean anything."
    )
    p = raw.params
    timing = [
        f"round {i}: {raw.timing[f'round {i}']} s"
        for i in range(1, rounds + 1)
        if f"round {i}" in raw.timing
    ]
    if "once" in raw.timing:
        timing.append(f"once-per-proxy figures: {raw.timing['once']} s")
    if "total" in raw.timing:
        timing.append(f"total {raw.timing['total']} s")
    out.append("")
    out.append(
        f"Durations: {rounds} rounds, each proxy in turn; per round and proxy wrk "
        f"{p.get('duration', '?')} s, ab -n {p.get('ab_n', '?')} ({p.get('ab_t', '?')} s at most), one {p.get('size', '?')} relay "
        f"and one tunnel download ({p.get('big_timeout', '?')} s at most each); once: "
        f"{p.get('tunnels', '?')} idle tunnels, slow reader {p.get('slow', '?')} s."
        + (f" Took {'; '.join(timing)}." if timing else "")
    )
    if raw.versions:
        out.append("")
        out.append(
            "Versions: "
            + "; ".join(f"{HEAD.get(k, k)}: {v}" for k, v in raw.versions.items())
            + "."
        )
    notes = list(raw.notes)
    for c in cols:
        notes += partial_notes(raw, c, rounds)
        notes += counter_notes(raw, c)
    notes += [f"{k}: skipped — {v}" for k, v in raw.skipped.items()]
    if any_flag:
        notes.insert(
            0, f"{FLAG}: some figures varied by more than {FLAG_SPREAD_PCT:.0f}% between rounds"
        )
    out += notes_lines(notes)
    return "\n".join(out)


def run_lines(raw: Raw, names: Mapping[str, str]) -> list[str]:
    """How long each part took and the tools' versions, under a scenario's table (``names``:
    the column titles of the raw lines' keys)."""
    out = []
    timing = [f"{k}: {v} s" for k, v in raw.timing.items()]
    if timing:
        out += ["", "Took " + "; ".join(timing) + "."]
    if raw.versions:
        versions = "; ".join(f"{names.get(k, k)}: {v}" for k, v in raw.versions.items())
        out += ["", f"Versions: {versions}."]
    return out


def notes_lines(notes: list[str]) -> list[str]:
    """The "Notes:" list under a table (nothing when there are none)."""
    return ["", "Notes:", *(f"- {n}" for n in notes)] if notes else []


def print_table(render: Callable[[Raw], str], path: str) -> None:
    """Print ``render`` of the raw lines in ``path`` (each table script's command line)."""
    with open(path) as f:
        print(render(parse(f)))


if __name__ == "__main__":
    print_table(render, sys.argv[1])
