"""Turn the raw lines written by ./run into one markdown table (plus notes).

usage: python3 table.py RAWFILE
Raw line forms:  `params key=value ...`, `LABEL metric value [unit]`, `LABEL skipped reason...`,
`LABEL version text...`, `LABEL note text...`. LABEL `direct` is the "no proxy" column.
"""

import sys

ORDER = ["direct", "fwproxy", "fwproxy-workers", "squid", "tinyproxy", "proxy.py"]
HEAD = {"direct": "no proxy", "fwproxy-workers": "fwproxy --workers auto"}
RATIOS = ["squid", "proxy.py"]


def num(v):
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return None if x != x else x


def fmt_int(x):
    return f"{x:,.0f}"


def fmt2(x):
    return f"{x:,.2f}"


def fmt1(x):
    return f"{x:,.1f}"


def main(path):
    params, data, full, skipped, notes, versions, labels = {}, {}, {}, {}, [], {}, []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "params":
                params.update(p.split("=", 1) for p in parts[1:] if "=" in p)
                continue
            if len(parts) < 2:
                continue
            label, key, rest = parts[0], parts[1], " ".join(parts[2:])
            if key == "skipped":
                skipped[label] = rest
            elif key == "version":
                versions[label] = rest
            elif key == "note" or key.endswith("_error") or key.endswith("_note"):
                notes.append(f"{label}: {key.replace('_', ' ')} {rest}".strip())
            else:
                data.setdefault(label, {})[key] = parts[2] if len(parts) > 2 else ""
                full.setdefault(label, {})[key] = rest
                if label not in labels:
                    labels.append(label)
    cols = [c for c in ORDER if c in labels] + [c for c in labels if c not in ORDER]
    size = params.get("size", "1GiB").replace("GiB", " GiB").replace("MiB", " MiB")
    rows = [
        ("relay_keepalive_rps", "small GET, keep-alive, 50 conns (req/s) ↑", fmt_int),
        ("relay_keepalive_p50_ms", "latency p50 (ms) ↓", fmt2),
        ("relay_keepalive_p99_ms", "latency p99 (ms) ↓", fmt2),
        (
            "relay_keepalive_cpu_ticks_per_1k",
            "proxy CPU per 1,000 requests (ticks of 10 ms) ↓",
            fmt2,
        ),
        ("relay_newconn_rps", "small GET, new connection per request (req/s) ↑", fmt_int),
        ("relay_big_MBps", f"{size} through the HTTP relay (MB/s) ↑", fmt_int),
        ("tunnel_big_MBps", f"{size} through a CONNECT tunnel, median of 3 (MB/s) ↑", fmt_int),
        (
            "rss_per_tunnel_kib",
            f"RSS per idle CONNECT tunnel, {params.get('tunnels', '?')} tunnels (KiB) ↓",
            fmt1,
        ),
        (
            "slow_reader_rss_growth_kib",
            f"RSS growth, {size} relayed to a slow reader for {params.get('slow', '?')} s (KiB) ↓",
            fmt_int,
        ),
    ]
    # flags shown next to a value, and footnotes
    flag = {}
    for c in cols:
        d = data.get(c, {})
        if d.get("relay_big_complete") == "no":
            flag[(c, "relay_big_MBps")] = " (partial)"
            notes.append(
                f"{c}: the {size} relay did not finish in {params.get('big_timeout', '?')} s "
                f"({d.get('relay_big_bytes', '?')} bytes); MB/s is over what arrived"
            )
        if d.get("tunnel_big_complete") == "no":
            flag[(c, "tunnel_big_MBps")] = " (partial)"
            notes.append(
                f"{c}: a {size} tunnel download did not finish in {params.get('big_timeout', '?')} s"
            )
        closed = num(d.get("tunnels_closed_by_proxy"))
        if closed:
            flag[(c, "rss_per_tunnel_kib")] = " (!)"
            notes.append(
                f"{c}: {closed:.0f} of the idle tunnels were already closed when RSS was read "
                f"(opening them took {d.get('tunnels_open_seconds', '?')} s)"
            )
        for k, what in (
            ("relay_keepalive_non2xx", "non-2xx responses (wrk)"),
            ("relay_keepalive_socket_errors", "socket errors (wrk)"),
            ("relay_newconn_failed", "failed requests (ab)"),
            ("relay_newconn_non2xx", "non-2xx responses (ab)"),
        ):
            v = d.get(k)
            if v not in (None, "", "0"):
                rest = full[c][k][len(v) :].strip()
                note = f"{c}: {v} {what}{' ' + rest if rest else ''}"
                if (
                    k == "relay_keepalive_socket_errors"
                    and "connect 0 read" in rest
                    and "write 0 timeout 0" in rest
                    and num(d.get("relay_keepalive_non2xx")) == 0
                ):
                    note += (
                        ": read errors alone mean the proxy closed the client connection "
                        "after each response (no keep-alive), so wrk reconnected"
                    )
                notes.append(note)
    head = (
        ["figure"]
        + [HEAD.get(c, c) for c in cols]
        + [f"fwproxy / {r}" for r in RATIOS]
        + ["fwproxy --workers auto / squid"]
    )
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, title, fmt in rows:
        cells = [title]
        for c in cols:
            v = num(data.get(c, {}).get(key))
            cells.append("—" if v is None else fmt(v) + flag.get((c, key), ""))
        fw = num(data.get("fwproxy", {}).get(key))
        for r in RATIOS:
            pv = num(data.get(r, {}).get(key))
            if fw is None or pv is None:
                cells.append("—")
            elif pv == 0:
                cells.append("—" if fw == 0 else "∞")
            else:
                r = fw / pv
                cells.append(f"{r:.2f}×" if r >= 0.1 or r == 0 else f"{r:.2g}×")
        fww = num(data.get("fwproxy-workers", {}).get(key))
        sq = num(data.get("squid", {}).get(key))
        if fww is None or not sq:
            cells.append("—")
        else:
            cells.append(f"{fww / sq:.2f}×")
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    out.append(
        "↑ higher is better, ↓ lower is better; a ratio is fwproxy's figure divided by the peer's "
        "(so > 1 is better for ↑ rows and worse for ↓ rows). Only ratios from one run mean anything."
    )
    if versions:
        out.append("")
        out.append(
            "Versions: " + "; ".join(f"{HEAD.get(k, k)}: {v}" for k, v in versions.items()) + "."
        )
    for k, v in skipped.items():
        notes.append(f"{k}: skipped — {v}")
    if notes:
        out.append("")
        out.append("Notes:")
        out.extend(f"- {n}" for n in notes)
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1])
