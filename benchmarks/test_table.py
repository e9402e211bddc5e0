"""Tests for table.py: medians, spreads, flags and ratios from raw lines written as ./run does.

Run: python -m pytest -q -p no:cacheprovider benchmarks/test_table.py
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import table  # noqa: E402


def rounds_of(label: str, key: str, values: list[float], unit: str = "") -> list[str]:
    return [f"{label} {key} {v} {unit}".strip() for v in values]


def row(text: str, title_start: str) -> list[str]:
    for line in text.splitlines():
        if line.startswith(f"| {title_start}"):
            return [c.strip() for c in line.strip("|").split("|")]
    raise AssertionError(f"no row {title_start!r} in:\n{text}")


def header(text: str) -> list[str]:
    return [c.strip() for c in text.splitlines()[0].strip("|").split("|")]


def test_summary_median_range_and_spread() -> None:
    s = table.summarize(["100", "90", "110"])
    assert s is not None
    assert (s.median, s.low, s.high, s.count) == (100, 90, 110, 3)
    assert s.spread_pct == 20.0
    assert s.flagged
    t = table.summarize(["100", "95", "105", "nan", "x"])
    assert t is not None
    assert t.count == 3 and t.spread_pct == 10.0 and not t.flagged
    assert table.summarize(["nan", ""]) is None


def test_even_count_median_is_the_mean_of_the_middle_two() -> None:
    s = table.summarize(["1", "2", "3", "10"])
    assert s is not None and s.median == 2.5


def test_zero_median() -> None:
    assert table.summarize(["0", "0", "0"]).spread_pct == 0.0  # type: ignore[union-attr]
    s = table.summarize(["0", "0", "5"])
    assert s is not None and s.spread_pct is None and s.flagged


def test_one_sample_is_never_flagged() -> None:
    s = table.summarize(["7"])
    assert s is not None and not s.flagged


def test_ratio_is_of_medians_and_carries_flags() -> None:
    a = table.summarize(["200", "190", "210"])
    b = table.summarize(["100", "99", "101"])
    assert table.ratio(a, b) == "2.00×"
    wide = table.summarize(["100", "50", "101"])
    assert table.ratio(a, wide) == f"2.00× {table.FLAG}"
    assert table.ratio(a, None) == "—"
    assert table.ratio(a, table.summarize(["0", "0", "0"])) == "∞"


def sample_raw() -> list[str]:
    lines = ["params mode=full rounds=3 size=1GiB big_timeout=60 tunnels=2000 slow=15 duration=10"]
    lines += ["fwproxy version abc123", "squid version 5.7"]
    # one slow moment fell on fwproxy in round 2 and on squid in round 1
    per_round = {
        "fwproxy": [5000, 2500, 5100],
        "squid": [6000, 9800, 10000],
        "fwproxy@e791c2a": [4000, 4100, 4050],
    }
    for r in range(3):
        for label, rps in per_round.items():
            lines.append(f"{label} relay_keepalive_rps {rps[r]} req/s")
            lines.append(f"{label} relay_keepalive_socket_errors 0")
        lines.append(f"timing round {r + 1} 42 s")
    lines += [
        "squid relay_big_MBps 1 MB/s",
        "squid relay_big_partial 60000000 bytes in round 1",
        "fwproxy rss_per_tunnel_kib 3.2 KiB",
        "squid rss_per_tunnel_kib 30.7 KiB",
        "fwproxy tunnels_closed_by_proxy 0",
        "squid tunnels_closed_by_proxy 3",
        "squid tunnels_open_seconds 9.5 s",
        "timing once 30 s",
        "timing total 200 s",
    ]
    return lines


def test_render_medians_spreads_and_flags() -> None:
    text = table.render(table.parse(sample_raw()))
    cols = header(text)
    assert cols[:4] == ["figure", "fwproxy", "fwproxy@e791c2a", "squid"]
    assert "fwproxy / squid" in cols and "fwproxy / fwproxy@e791c2a" in cols
    assert "fwproxy / proxy.py" not in cols  # not measured: no empty ratio column
    rps = dict(zip(cols, row(text, "small GET, keep-alive"), strict=True))
    assert rps["fwproxy"] == f"5,000 (2,500–5,100, 52%) {table.FLAG}"
    assert rps["squid"] == f"9,800 (6,000–10,000, 41%) {table.FLAG}"
    assert rps["fwproxy@e791c2a"] == "4,050 (4,000–4,100, 2%)"
    # a one-pass reading of round 1 would say 0.83×; the medians say:
    assert rps["fwproxy / squid"] == f"0.51× {table.FLAG}"
    assert rps["fwproxy / fwproxy@e791c2a"] == f"1.23× {table.FLAG}"


def test_render_once_rows_partial_and_durations() -> None:
    text = table.render(table.parse(sample_raw()))
    cols = header(text)
    rss = dict(zip(cols, row(text, "RSS per idle CONNECT tunnel"), strict=True))
    assert rss["fwproxy"] == "3.2" and rss["squid"] == "30.7 (!)"
    assert "squid: 3 of the idle tunnels were already closed when RSS was read" in text
    assert rss["fwproxy / squid"] == "0.10×"
    relay = dict(zip(cols, row(text, "1 GiB through the HTTP relay"), strict=True))
    assert relay["squid"] == "1 (n=1) (partial)"
    assert "squid: the 1 GiB relay did not finish in 60 s in 1 of 1 rounds" in text
    assert "(not asked again after round 1)" in text
    assert "Took round 1: 42 s; round 2: 42 s; round 3: 42 s; once-per-proxy figures: 30 s" in text
    assert "fwproxy / squid" in text and "Versions: fwproxy: abc123; squid: 5.7." in text


def test_read_errors_alone_explained() -> None:
    lines = ["params rounds=3"]
    for _ in range(3):
        lines.append("tinyproxy relay_keepalive_rps 3000 req/s")
        lines.append("tinyproxy relay_keepalive_non2xx 0")
        lines.append(
            "tinyproxy relay_keepalive_socket_errors 100 (connect 0 read 100 write 0 timeout 0)"
        )
    text = table.render(table.parse(lines))
    assert "tinyproxy: 300 socket errors (wrk) over the rounds" in text
    assert "no keep-alive" in text


def test_run_lines_and_notes_lines_under_a_scenario_table() -> None:
    raw = table.Raw(timing={"round 1": "12"}, versions={"bump": "fwproxy 1.0", "curl": "7.88"})
    lines = table.run_lines(raw, {"bump": "fwproxy intercepting"})
    assert lines == [
        "",
        "Took round 1: 12 s.",
        "",
        "Versions: fwproxy intercepting: fwproxy 1.0; curl: 7.88.",
    ]
    assert table.run_lines(table.Raw(), {}) == []
    assert table.notes_lines([]) == []
    assert table.notes_lines(["a"]) == ["", "Notes:", "- a"]
