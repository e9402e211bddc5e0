"""Tests for peek_table.py: the ratio, difference and targets from raw lines written as ./peek does.

Run: python -m pytest -q -p no:cacheprovider benchmarks/test_peek_table.py
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import peek_table  # noqa: E402
import table  # noqa: E402


def raw_lines(
    on_mbps: list[float],
    off_mbps: list[float],
    on_rss: list[float],
    off_rss: list[float],
    tunnels: int = 2000,
) -> list[str]:
    """Rounds interleaved as ./peek writes them: download rounds, then the fresh-process ones."""
    lines = [f"params mode=full rounds={len(on_mbps)} size=1GiB big_timeout=60 tunnels={tunnels}"]
    for i, (a, b) in enumerate(zip(on_mbps, off_mbps, strict=True)):
        lines += [f"direct tls_tunnel_MBps {2 * a} MB/s"]
        pair = [f"peek tls_tunnel_MBps {a} MB/s", f"nopeek tls_tunnel_MBps {b} MB/s"]
        lines += pair if i % 2 == 0 else pair[::-1]
    lines += ["peek download_tunnels_logged 9", "peek download_tunnels_logged_with_sni 9"]
    lines += ["nopeek download_tunnels_logged 9", "nopeek download_tunnels_logged_with_sni 0"]
    for a, b in zip(on_rss, off_rss, strict=True):
        lines += [f"peek rss_per_tunnel_kib {a} KiB", f"peek sni_logged {tunnels + 6}"]
        lines += ["peek tunnels_closed_by_proxy 0", f"nopeek rss_per_tunnel_kib {b} KiB"]
        lines += ["nopeek sni_logged 0", "nopeek tunnels_closed_by_proxy 0"]
    return lines


def render(lines: list[str]) -> str:
    return peek_table.render(table.parse(lines))


def row(text: str, title_start: str) -> list[str]:
    for line in text.splitlines():
        if line.startswith(f"| {title_start}"):
            return [c.strip() for c in line.strip("|").split("|")]
    raise AssertionError(f"no row {title_start!r} in:\n{text}")


def test_columns_ratio_and_difference_are_of_medians() -> None:
    text = render(raw_lines([1000, 960, 980], [990, 1010, 1000], [5.3, 5.5, 5.2], [5.0, 5.1, 4.9]))
    assert text.splitlines()[0] == (
        "| figure | no proxy | peek on | peek off | on / off | on − off |"
    )
    mbps = row(text, "1 GiB through a CONNECT tunnel")
    assert mbps[1].startswith("1,960 (1,920–2,000, 4%)")
    assert mbps[2] == "980 (960–1,000, 4%)"
    assert mbps[3] == "1,000 (990–1,010, 2%)"
    assert mbps[4] == "0.98×"
    assert mbps[5] == "−20"
    rss = row(text, "RSS per idle tunnel")
    assert "2000 tunnels" in rss[0]
    assert rss[1] == "—"  # no proxy, no tunnels
    assert rss[2].startswith("5.30 (5.20–5.50")
    assert rss[3].startswith("5.00 (4.90–5.10")
    assert rss[5] == "+0.30"


def test_targets_met() -> None:
    text = render(raw_lines([1000, 960, 980], [990, 1010, 1000], [5.3, 5.5, 5.2], [5.0, 5.1, 4.9]))
    assert (
        "peek on / off = 0.980 (ratio of the medians); per round: 1.010, 0.950, 0.980 "
        "(their median 0.980); target ≥ 0.95: met"
    ) in text
    assert "peek adds +0.30 KiB per idle tunnel (medians; per round: +0.30, +0.40, +0.30)" in text
    assert "target ≤ 0.5 KiB: met" in text
    assert "NOT met" not in text
    assert "Notes:" not in text


def test_targets_not_met() -> None:
    text = render(raw_lines([900, 930, 910], [1000, 1010, 990], [6.0, 6.1, 5.9], [5.0, 5.1, 4.9]))
    assert "peek on / off = 0.910 (ratio of the medians)" in text
    assert "per round: 0.900, 0.921, 0.919 (their median 0.919)" in text
    assert "target ≥ 0.95: NOT met" in text
    assert "peek adds +1.00 KiB" in text
    assert "target ≤ 0.5 KiB: NOT met" in text


def test_a_wide_spread_is_flagged_on_the_verdict() -> None:
    text = render(raw_lines([1000, 700, 980], [990, 1010, 1000], [5.3, 5.5, 5.2], [5.0, 5.1, 4.9]))
    line = next(x for x in text.splitlines() if x.startswith("- Throughput"))
    assert line.endswith(f"({table.FLAG} a spread is over 15%: re-run)")
    line = next(x for x in text.splitlines() if x.startswith("- RSS"))
    assert table.FLAG not in line


def test_peeking_that_did_not_happen_is_noted() -> None:
    lines = raw_lines([1000] * 3, [1000] * 3, [5.0] * 3, [5.0] * 3, tunnels=100)
    lines = [x.replace("peek sni_logged 106", "peek sni_logged 0") for x in lines]
    lines = [
        x.replace(
            "peek download_tunnels_logged_with_sni 9", "peek download_tunnels_logged_with_sni 3"
        )
        for x in lines
    ]
    text = render(lines)
    assert "peek: fewer access log lines with sni= than tunnels" in text
    assert "peek: 3 of the 9 tunnels of the downloads were logged with sni=" in text


def test_peeking_on_the_side_without_it_is_noted() -> None:
    lines = raw_lines([1000] * 3, [1000] * 3, [5.0] * 3, [5.0] * 3, tunnels=100)
    lines = [x.replace("nopeek sni_logged 0", "nopeek sni_logged 106") for x in lines]
    lines = [
        x.replace(
            "nopeek download_tunnels_logged_with_sni 0", "nopeek download_tunnels_logged_with_sni 9"
        )
        for x in lines
    ]
    text = render(lines)
    assert "nopeek: access log lines with sni= (106, 106, 106): the tunnels were peeked" in text
    assert "nopeek: 9 tunnels of the downloads were peeked" in text


def test_closed_tunnels_and_partial_downloads_are_noted() -> None:
    lines = raw_lines([1000] * 3, [1000] * 3, [5.0] * 3, [5.0] * 3)
    lines[-1] = "nopeek tunnels_closed_by_proxy 12"
    lines.append("peek tls_tunnel_partial 5000 bytes (HTTP 200) in round 2")
    text = render(lines)
    assert "nopeek: 12 idle tunnels were closed before RSS was read" in text
    assert "peek: tls tunnel partial in 1 rounds (the download did not finish in 60 s" in text


def test_missing_figures_give_dashes_not_errors() -> None:
    text = render(["params rounds=3 tunnels=100", "peek tls_tunnel_MBps 100 MB/s"])
    cells = row(text, "1 GiB")
    assert cells[-2:] == ["—", "—"]
    assert "- Throughput" not in text and "- RSS" not in text
