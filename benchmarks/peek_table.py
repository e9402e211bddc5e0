"""Turn the raw lines written by ./peek into a markdown table: what peeking costs a tunnel.

usage: python3 peek_table.py RAWFILE

The raw lines are those of ./run (parsed by table.py): `params key=value ...`, `timing ...`,
`LABEL metric value [unit]` once per round, `LABEL version|note|xxx_error ...`. Labels: `direct`
(the TLS origin without a proxy), `peek` (fwproxy with `[tunnel] peek_ports = [18443]`) and
`nopeek` (the same configuration with `peek_ports = []`). Metrics: `tls_tunnel_MBps` and
`proxy_cpu_s_per_GiB` (the rounds of the download), `rss_per_tunnel_kib` (one fresh process per
configuration and round, holding idle tunnels that have sent their ClientHello), `sni_logged`
(access log lines with an `sni=` field: every peeked tunnel has one, a tunnel that was not
peeked none).

Each cell is the median over the rounds (min–max, spread), as in table.py; "on / off" is the
ratio of the medians, "on − off" their difference. Under the table the two targets of issue 9
are checked against the medians: peeking keeps the throughput within 5% and adds at most
0.5 KiB of RSS per idle tunnel.
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

#: peeking may cost this fraction of the tunnel's throughput (issue 9)
MAX_SLOWDOWN = 0.05
#: and this much RSS per idle tunnel that has sent its ClientHello, in KiB
MAX_RSS_KIB = 0.5
COLUMNS = ("direct", "peek", "nopeek")
HEAD = {"direct": "no proxy", "peek": "peek on", "nopeek": "peek off"}


def figure(raw: Raw, label: str, key: str) -> Summary | None:
    return summarize(raw.values.get(label, {}).get(key, []))


def paired(raw: Raw, key: str) -> list[tuple[float, float]]:
    """The (peek, nopeek) values of each round in which both were measured."""
    a = raw.values.get("peek", {}).get(key, [])
    b = raw.values.get("nopeek", {}).get(key, [])
    out = []
    for x, y in zip(a, b, strict=False):
        fx, fy = num(x), num(y)
        if fx is not None and fy is not None:
            out.append((fx, fy))
    return out


def rows(params: dict[str, str]) -> list[tuple[str, str, Callable[[float], str]]]:
    """(metric, title, format) for each row of the table."""
    size = params.get("size", "1GiB").replace("GiB", " GiB").replace("MiB", " MiB")
    tunnels = params.get("tunnels", "?")
    return [
        ("tls_tunnel_MBps", f"{size} through a CONNECT tunnel, TLS origin (MB/s) ↑", fmt_int),
        ("proxy_cpu_s_per_GiB", "proxy CPU per GiB tunnelled (s) ↓", fmt2),
        (
            "rss_per_tunnel_kib",
            f"RSS per idle tunnel after its ClientHello, {tunnels} tunnels, fresh process (KiB) ↓",
            fmt2,
        ),
    ]


def difference(a: Summary | None, b: Summary | None, fmt: Callable[[float], str]) -> str:
    if a is None or b is None:
        return "—"
    d = a.median - b.median
    return ("+" if d >= 0 else "−") + fmt(abs(d)) + (f" {FLAG}" if a.flagged or b.flagged else "")


def caveat(a: Summary, b: Summary) -> str:
    flagged = a.flagged or b.flagged
    return f" ({FLAG} a spread is over {FLAG_SPREAD_PCT:.0f}%: re-run)" if flagged else ""


def verdicts(raw: Raw) -> list[str]:
    """The two targets of issue 9, read from the medians."""
    out = []
    on, off = figure(raw, "peek", "tls_tunnel_MBps"), figure(raw, "nopeek", "tls_tunnel_MBps")
    if on is not None and off is not None and off.median > 0:
        r = on.median / off.median
        rounds = [x / y for x, y in paired(raw, "tls_tunnel_MBps") if y]
        per_round = ", ".join(f"{x:.3f}" for x in rounds)
        met = "met" if r >= 1 - MAX_SLOWDOWN else "NOT met"
        out.append(
            f"Throughput: peek on / off = {r:.3f} (ratio of the medians); per round: {per_round} "
            f"(their median {statistics.median(rounds) if rounds else float('nan'):.3f}); "
            f"target ≥ {1 - MAX_SLOWDOWN:.2f}: {met}{caveat(on, off)}"
        )
    on, off = figure(raw, "peek", "rss_per_tunnel_kib"), figure(raw, "nopeek", "rss_per_tunnel_kib")
    if on is not None and off is not None:
        d = on.median - off.median
        per_round = ", ".join(f"{x - y:+.2f}" for x, y in paired(raw, "rss_per_tunnel_kib"))
        met = "met" if d <= MAX_RSS_KIB else "NOT met"
        out.append(
            f"RSS: peek adds {d:+.2f} KiB per idle tunnel (medians; per round: {per_round}); "
            f"target ≤ {MAX_RSS_KIB} KiB: {met}{caveat(on, off)}"
        )
    return out


def check_notes(raw: Raw) -> list[str]:
    """What would make a figure meaningless: tunnels closed early, peeking not (or always) on."""
    out = []
    for label, counts in raw.partial.items():
        for key, n in counts.items():
            out.append(
                f"{label}: {key.replace('_', ' ')} in {n} rounds (the download did not finish in "
                f"{raw.params.get('big_timeout', '?')} s: MB/s is over what arrived)"
            )
    tunnels = num(raw.params.get("tunnels"))
    for label in ("peek", "nopeek"):
        d = raw.values.get(label, {})
        closed = [num(v) or 0 for v in d.get("tunnels_closed_by_proxy", [])]
        if any(closed):
            out.append(
                f"{label}: {sum(closed):.0f} idle tunnels were closed before RSS was read "
                "(RSS per tunnel is meaningless in those rounds)"
            )
        # one access log line per tunnel, closed: a peeked one ends with sni=NAME
        total = (d.get("download_tunnels_logged") or ["?"])[-1]
        with_sni = (d.get("download_tunnels_logged_with_sni") or ["?"])[-1]
        if label == "peek" and with_sni != total:
            out.append(
                f"peek: {with_sni} of the {total} tunnels of the downloads were logged "
                "with sni=: were they peeked?"
            )
        if label == "nopeek" and num(with_sni):
            out.append(f"nopeek: {with_sni} tunnels of the downloads were peeked (sni= logged)")
        logged = d.get("sni_logged", [])
        shown = ", ".join(logged)
        if label == "peek" and tunnels and any((num(x) or 0) < tunnels for x in logged):
            out.append(
                f"peek: fewer access log lines with sni= than tunnels ({shown}): "
                "were the tunnels peeked?"
            )
        if label == "nopeek" and any(num(x) for x in logged):
            out.append(f"nopeek: access log lines with sni= ({shown}): the tunnels were peeked")
    return out


def render(raw: Raw) -> str:
    rounds = int(raw.params.get("rounds", "1"))
    cols = [c for c in COLUMNS if c in raw.labels]
    head = ["figure"] + [HEAD[c] for c in cols] + ["on / off", "on − off"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, title, fmt in rows(raw.params):
        sums = {c: figure(raw, c, key) for c in cols}
        cells = [title] + [cell(sums[c], fmt, rounds, False) for c in cols]
        on, off = sums.get("peek"), sums.get("nopeek")
        cells += [ratio_cell(on, off), difference(on, off, fmt)]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    out.append(
        f"Each cell: the median over {rounds} interleaved rounds (min–max, spread = (max − min) / "
        f"median); {FLAG} marks a spread over {FLAG_SPREAD_PCT:.0f}% and what rests on it. "
        '"on / off" is the ratio of the medians, "on − off" their difference. The RSS row: one '
        "fresh fwproxy per configuration and round."
    )
    out.append("")
    out.extend(f"- {v}" for v in verdicts(raw))
    out += run_lines(raw, HEAD)
    notes = raw.notes + check_notes(raw)
    out += notes_lines(notes)
    return "\n".join(out)


if __name__ == "__main__":
    print_table(render, sys.argv[1])
