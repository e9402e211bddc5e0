"""Tests for intercept_table.py: cells, ratios, the 3× target and the sanity notes, from raw lines
written as ./intercept does.

Run: python -m pytest -q -p no:cacheprovider benchmarks/test_intercept_table.py
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import intercept_table  # noqa: E402
import table  # noqa: E402

LABELS = ("direct", "bump", "mitmproxy", "splice")


def raw_lines(
    keepalive: dict[str, list[float]],
    newconn: dict[str, list[float]] | None = None,
    conns: int = 50,
    skipped: dict[str, str] | None = None,
) -> list[str]:
    """Rounds as ./intercept writes them: per round, each label's keep-alive then new-connection
    figures, with the counts curl made (every keep-alive connection reused, no new-connection
    one)."""
    newconn = newconn or {k: [v / 10 for v in vs] for k, vs in keepalive.items()}
    rounds = len(next(iter(keepalive.values())))
    lines = [f"params mode=full rounds={rounds} duration=10 conns={conns}"]
    for label, reason in (skipped or {}).items():
        lines.append(f"{label} skipped {reason}")
    for r in range(rounds):
        for label in (x for x in LABELS if x in keepalive):
            ka, nc = keepalive[label][r], newconn[label][r]
            lines += [
                f"{label} tls_keepalive_rps {ka} req/s",
                f"{label} tls_keepalive_requests {ka * 12:.0f}",
                f"{label} tls_keepalive_connections {conns}",
                f"{label} tls_newconn_rps {nc} req/s",
                f"{label} tls_newconn_requests {nc * 12:.0f}",
                f"{label} tls_newconn_connections {nc * 12:.0f}",
            ]
            if label != "direct":
                lines += [
                    f"{label} tls_keepalive_cpu_ticks_per_1k {100_000 / ka:.2f} ticks",
                    f"{label} tls_newconn_cpu_ticks_per_1k {100_000 / nc:.2f} ticks",
                    f"{label} tls_keepalive_cpu_pct {80 + 5 * r} %",
                    f"{label} tls_newconn_cpu_pct {70 + 5 * r} %",
                ]
    if "bump" in keepalive:
        lines.append("bump https_requests_logged 5000")
    if "splice" in keepalive:
        lines.append("splice https_requests_logged 0")
    return lines


def render(lines: list[str]) -> str:
    return intercept_table.render(table.parse(lines))


def row(text: str, title_start: str) -> list[str]:
    for line in text.splitlines():
        if line.startswith(f"| {title_start}"):
            return [c.strip() for c in line.strip("|").split("|")]
    raise AssertionError(f"no row {title_start!r} in:\n{text}")


FULL = {
    "direct": [6000.0, 5800.0, 6200.0],
    "bump": [1000.0, 1100.0, 1050.0],
    "mitmproxy": [300.0, 320.0, 310.0],
    "splice": [2000.0, 2100.0, 1900.0],
}


def test_columns_cells_and_ratios_are_of_medians() -> None:
    text = render(raw_lines(FULL))
    assert text.splitlines()[0] == (
        "| figure | no proxy | fwproxy intercepting | mitmproxy intercepting | fwproxy splicing "
        "| fwproxy bump / mitmproxy | fwproxy bump / splice |"
    )
    ka = row(text, "HTTPS 1 KiB GET, keep-alive, 50 conns")
    assert ka[1] == "6,000 (5,800–6,200, 7%)"
    assert ka[2] == "1,050 (1,000–1,100, 10%)"
    assert ka[3] == "310 (300–320, 6%)"
    assert ka[4] == "2,000 (1,900–2,100, 10%)"
    assert ka[5] == f"{1050 / 310:.2f}×"
    assert ka[6] == "0.53×"
    cpu = row(text, "proxy CPU per 1,000 requests")
    assert cpu[1] == "—"  # no proxy, no proxy CPU
    assert cpu[2].startswith("95.24 (90.91–100.00")
    share = row(text, "proxy CPU used meanwhile (% of one core)")
    assert share[1:5] == ["—", "85 (80–90, 12%)", "85 (80–90, 12%)", "85 (80–90, 12%)"]
    hs = row(text, "new connection + full TLS handshake")
    assert hs[2] == "105 (100–110, 10%)"
    assert hs[3] == "31 (30–32, 6%)"


def test_target_met_with_per_round_ratios() -> None:
    text = render(raw_lines(FULL))
    assert (
        "Keep-alive: fwproxy intercepting / mitmproxy = 3.39× (ratio of the medians); per round: "
        "3.33, 3.44, 3.39 (their median 3.39); target ≥ 3×: met"
    ) in text
    assert "fwproxy intercepting 105/s, mitmproxy intercepting 31/s" in text
    assert "Notes:" not in text


def test_target_not_met() -> None:
    text = render(raw_lines({**FULL, "bump": [600.0, 610.0, 620.0]}))
    assert "fwproxy intercepting / mitmproxy = 1.97×" in text
    assert "target ≥ 3×: NOT met" in text


def test_a_wide_spread_is_flagged_on_the_verdict_and_ratio() -> None:
    text = render(raw_lines({**FULL, "mitmproxy": [200.0, 320.0, 310.0]}))
    line = next(x for x in text.splitlines() if x.startswith("- Keep-alive"))
    assert line.endswith(f"({table.FLAG} a spread is over 15%: re-run)")
    assert row(text, "HTTPS 1 KiB GET")[5].endswith(table.FLAG)


def test_interception_not_available_keeps_its_column() -> None:
    reason = "interception not available (fwproxy ca init: invalid choice: 'ca')"
    measured = {k: v for k, v in FULL.items() if k != "bump"}
    text = render(raw_lines(measured, skipped={"bump": reason}))
    assert "fwproxy intercepting" in text.splitlines()[0]
    for title in ("HTTPS 1 KiB GET", "proxy CPU per 1,000 requests", "new connection"):
        cells = row(text, title)
        assert cells[2] == "interception not available"
        assert cells[-2:] == ["—", "—"]  # no ratio without the column
    assert "- Keep-alive" not in text
    assert f"fwproxy intercepting: skipped — {reason}" in text
    assert "mitmproxy intercepting 31/s" in text


def test_connections_not_reused_or_reused_and_failures_are_noted() -> None:
    lines = raw_lines(FULL)
    lines = [
        "splice tls_keepalive_connections 400" if x == "splice tls_keepalive_connections 50" else x
        for x in lines
    ]
    lines = [
        "bump tls_newconn_connections 50" if x.startswith("bump tls_newconn_connections") else x
        for x in lines
    ]
    lines += ["mitmproxy tls_keepalive_failed 7", "mitmproxy tls_keepalive_failed 3"]
    text = render(lines)
    assert "splice: the keep-alive load opened 400, 400, 400 connections" in text
    assert "they were not reused" in text
    assert "bump: the new-connection load reused connections (50, 50, 50 for" in text
    assert "mitmproxy: 10 keep-alive requests without a 200 and 1 KiB over the rounds" in text


def test_a_bump_that_did_not_bump_is_noted() -> None:
    lines = [
        x.replace("bump https_requests_logged 5000", "bump https_requests_logged 0")
        for x in raw_lines(FULL)
    ]
    lines = [
        x.replace("splice https_requests_logged 0", "splice https_requests_logged 9") for x in lines
    ]
    text = render(lines)
    assert "bump: no `GET https://` lines in its access log: did it intercept?" in text
    assert "splice: 9 `GET https://` lines in its access log: it bumped" in text


def test_curl_errors_are_notes_and_missing_figures_dashes() -> None:
    text = render(
        [
            "params rounds=3 conns=50",
            "bump tls_keepalive_rps 100 req/s",
            "bump tls_keepalive_curl_error 3 in round 1, most often: curl: (35) alert",
        ]
    )
    assert "- bump: tls keepalive curl error 3 in round 1, most often: curl: (35) alert" in text
    assert row(text, "HTTPS 1 KiB GET")[1] == "100 (n=1)"
    assert row(text, "new connection")[1] == "—"
    assert "- Keep-alive" not in text
