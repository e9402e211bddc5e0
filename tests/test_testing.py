"""fwproxy.testing, the test kit shipped for filter authors.

The ``fwproxy`` fixture against a real origin on 127.0.0.1 (relaying, records, configuration,
filter order and lifecycle, several proxies, failures); the in-memory pieces the protocol tests
do not already exercise; the pytest11 entry point; and docs/testing.md, whose example test
files are extracted and run with pytest in a subprocess, as a filter author would run them.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.servers import EchoServer, OriginServer, pattern, running
from twisted.logger import Logger
from zope.interface import implementer

import fwproxy.testing.pytest_plugin
from fwproxy.config import ConfigError
from fwproxy.interfaces import IFilterLifecycle, IRequestFilter
from fwproxy.message import Request
from fwproxy.record import TCP_DENIED, TCP_MISS
from fwproxy.testing import (
    OK5,
    ORIGIN_IP,
    WORLD_CONFIG,
    FailureLog,
    FakeResolver,
    Harness,
    LiveProxy,
    RecordsTimeout,
    World,
    get,
    live_config,
    recorder_filter,
    status_of,
)
from fwproxy.testing.live import EPHEMERAL
from fwproxy.testing.pytest_plugin import ProxyStarter

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def origin() -> Iterator[OriginServer]:
    with running(OriginServer("127.0.0.1")) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_origin(request: pytest.FixtureRequest) -> None:
    if "origin" in request.fixturenames:
        request.getfixturevalue("origin").clear()


@implementer(IRequestFilter)
class Seen:
    """Remembers each request it sees, with the X-Builtin header as the built-ins left it."""

    def __init__(self) -> None:
        self.paths: list[bytes] = []
        self.builtin: list[bytes | None] = []

    def requestReceived(self, request: Request) -> None:
        self.paths.append(request.path)
        self.builtin.append(request.headers.get("X-Builtin"))


@implementer(IRequestFilter)
class Raises:
    def requestReceived(self, request: Request) -> None:
        raise RuntimeError("filter bug")


@implementer(IRequestFilter, IFilterLifecycle)
class Lifecycle:
    def __init__(self) -> None:
        self.started = 0
        self.stopped = 0

    def requestReceived(self, request: Request) -> None:
        return None

    def startFilter(self) -> None:
        self.started += 1

    def stopFilter(self) -> None:
        self.stopped += 1

    def reopen(self) -> None:
        pass


def fetch(proxy: LiveProxy, url: str) -> tuple[int, bytes]:
    try:
        with proxy.opener().open(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


# -- the fwproxy fixture --------------------------------------------------------------------------


def test_relayed_get_through_proxy_url(
    fwproxy: ProxyStarter, origin: OriginServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    proxy = fwproxy()
    assert proxy.port > 0 and proxy.url == f"http://127.0.0.1:{proxy.port}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy.url}))
    with opener.open(f"{origin.url}/bytes/5", timeout=10) as r:
        assert r.status == 200
        assert len(r.read()) == 5
    seen = origin.last()
    assert seen.target == b"/bytes/5"  # origin-form: it came through a proxy
    [record] = proxy.wait_for_records(1)
    assert (record.method, record.target, record.status, record.result) == (
        "GET",
        f"{origin.url}/bytes/5",
        200,
        TCP_MISS,
    )
    assert record.upstream == origin.authority


def test_records_in_order(fwproxy: ProxyStarter, origin: OriginServer) -> None:
    proxy = fwproxy()
    for n in (1, 2, 3):
        assert fetch(proxy, f"{origin.url}/bytes/{n}")[0] == 200
    records = proxy.wait_for_records(3)
    assert [r.target for r in records] == [f"{origin.url}/bytes/{n}" for n in (1, 2, 3)]
    assert proxy.records == records


def test_wait_for_records_times_out_clearly(fwproxy: ProxyStarter, origin: OriginServer) -> None:
    proxy = fwproxy()
    fetch(proxy, f"{origin.url}/bytes/1")
    started = time.monotonic()
    with pytest.raises(AssertionError) as info:
        proxy.wait_for_records(2, timeout=0.3)
    assert 0.25 < time.monotonic() - started < 5
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, RecordsTimeout)
    message = str(info.value)
    assert "waited 0.3 s for 2 finished transaction(s), got 1" in message
    assert f"GET {origin.url}/bytes/1 -> 200 TCP_MISS" in message


def test_no_proxy_does_not_bypass_the_opener(
    fwproxy: ProxyStarter, origin: OriginServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    proxy = fwproxy()
    assert fetch(proxy, f"{origin.url}/bytes/2") == (200, pattern(2))
    assert len(proxy.wait_for_records(1)) == 1


HEADERS_TOML = """
[proxy]
listen = ["tcp:1:interface=127.0.0.1"]  # replaced: port 1 cannot be bound by a test

[acl.local]
src = ["127.0.0.0/8"]

[acl.secret]
url_regex = ["/secret"]

[access]
rules = ["deny secret", "allow local", "deny all"]

[headers]
set_request = { X-Builtin = "from-config" }
"""


def test_config_as_toml_text_listen_replaced(fwproxy: ProxyStarter, origin: OriginServer) -> None:
    proxy = fwproxy(config=HEADERS_TOML)
    assert proxy.port != 1 and proxy.config.listen == (EPHEMERAL,)
    assert fetch(proxy, f"{origin.url}/open")[0] == 200
    assert origin.last().headers("X-Builtin") == [b"from-config"]
    assert fetch(proxy, f"{origin.url}/secret")[0] == 403
    assert [r.result for r in proxy.wait_for_records(2)] == [TCP_MISS, TCP_DENIED]


def test_config_as_dict(fwproxy: ProxyStarter, origin: OriginServer) -> None:
    config = {
        "proxy": {"listen": ["tcp:1:interface=127.0.0.1"]},
        "acl": {"local": {"src": ["127.0.0.0/8"]}},
        "access": {"rules": ["allow local", "deny all"]},
        "headers": {"set_request": {"X-Builtin": "from-dict"}},
    }
    proxy = fwproxy(config=config)
    assert proxy.port != 1
    assert fetch(proxy, f"{origin.url}/open")[0] == 200
    assert origin.last().headers("X-Builtin") == [b"from-dict"]


def test_default_config_admits_only_loopback_destinations(
    fwproxy: ProxyStarter, origin: OriginServer
) -> None:
    proxy = fwproxy()
    assert fetch(proxy, f"{origin.url}/bytes/1")[0] == 200
    # a TEST-NET-1 address: denied before any connection is attempted
    assert fetch(proxy, "http://192.0.2.1/")[0] == 403
    assert [r.result for r in proxy.wait_for_records(2)] == [TCP_MISS, TCP_DENIED]
    assert live_config().listen == (EPHEMERAL,)


def test_given_filters_run_after_builtins(fwproxy: ProxyStarter, origin: OriginServer) -> None:
    seen = Seen()
    proxy = fwproxy(config=HEADERS_TOML, filters=[seen])
    assert fetch(proxy, f"{origin.url}/secret")[0] == 403  # the acl built-in denied it first
    assert fetch(proxy, f"{origin.url}/open")[0] == 200
    assert seen.paths == [b"/open"]
    assert seen.builtin == [b"from-config"]  # the headers built-in had run before


def test_filter_that_raises_answers_500_and_is_a_failure(
    fwproxy: ProxyStarter, origin: OriginServer
) -> None:
    proxy = fwproxy(filters=[Raises()])
    status, body = fetch(proxy, f"{origin.url}/bytes/1")
    assert status == 500 and b"internal error" in body
    [record] = proxy.wait_for_records(1)
    assert record.status == 500
    [failure] = proxy.take_failures()
    assert failure.check(RuntimeError)
    assert proxy.failures == []


@pytest.fixture
def lifecycle() -> Iterator[Lifecycle]:
    """A filter with a lifecycle, checked after the fwproxy fixture has ended (fixtures end in
    the reverse order of their start: a test asks for this one first)."""
    f = Lifecycle()
    yield f
    assert f.stopped == 1, "stopFilter was not called when the test ended"


def test_filters_are_stopped_at_test_end(lifecycle: Lifecycle, fwproxy: ProxyStarter) -> None:
    proxy = fwproxy(filters=[lifecycle])
    assert (lifecycle.started, lifecycle.stopped) == (1, 0)
    assert proxy.url


def test_stop_closes_open_connections_then_stops_filters(fwproxy: ProxyStarter) -> None:
    f = Lifecycle()
    proxy = fwproxy(filters=[f])
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(b"GET http://127.0.0.1:9/ HTTP/1.1\r\n")  # half a head: the proxy waits
        time.sleep(0.1)
        proxy.stop()
        assert f.stopped == 1
        s.settimeout(5)
        try:
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass  # aborted: as good as closed
    proxy.stop()  # idempotent
    assert f.stopped == 1
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=5).close()


def test_two_proxies_at_once(fwproxy: ProxyStarter, origin: OriginServer) -> None:
    a, b = fwproxy(filters=[Seen()]), fwproxy(config=HEADERS_TOML)
    assert a.port != b.port
    assert fetch(a, f"{origin.url}/a")[0] == 200
    assert fetch(b, f"{origin.url}/b")[0] == 200
    assert fetch(b, f"{origin.url}/secret")[0] == 403
    assert [r.target for r in a.wait_for_records(1)] == [f"{origin.url}/a"]
    assert [r.status for r in b.wait_for_records(2)] == [200, 403]


def test_connect_to_a_loopback_port(fwproxy: ProxyStarter) -> None:
    proxy = fwproxy()
    with running(EchoServer("127.0.0.1")) as echo:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            s.sendall(
                f"CONNECT {echo.authority} HTTP/1.1\r\nHost: {echo.authority}\r\n\r\n".encode()
            )
            assert s.recv(100).startswith(b"HTTP/1.1 200 ")
            s.sendall(b"ping")
            assert s.recv(100) == b"ping"


def test_opener_tunnels_https(fwproxy: ProxyStarter) -> None:
    """https:// through the opener is a CONNECT: here to an echo server, which answers the TLS
    handshake with itself (so the client gives up), but the tunnel was made."""
    proxy = fwproxy()
    with running(EchoServer("127.0.0.1")) as echo:
        with pytest.raises(urllib.error.URLError):
            proxy.opener().open(f"https://{echo.authority}/", timeout=10)
    [record] = proxy.wait_for_records(1)
    assert (record.method, record.target, record.status) == ("CONNECT", echo.authority, 200)


def test_kit_imports_neither_pytest_nor_the_global_reactor() -> None:
    code = (
        "import sys\n"
        "sys.modules['pytest'] = None  # importing it would fail\n"
        "import fwproxy.testing, fwproxy.testing.live, fwproxy.testing.world\n"
        "assert 'twisted.internet.reactor' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_bad_config_is_one_clear_line(fwproxy: ProxyStarter) -> None:
    with pytest.raises(pytest.fail.Exception) as info:
        fwproxy(config='[access]\nrules = ["allow nobody"]\n')
    assert str(info.value) == (
        "fwproxy: invalid config: <fwproxy test config>:2: access.rules: 'allow nobody' uses "
        "ACL 'nobody', which is not defined"
    )


def test_object_that_is_no_filter_is_refused(fwproxy: ProxyStarter) -> None:
    with pytest.raises(pytest.fail.Exception, match=r"filters\[0\]: .* provides none of"):
        fwproxy(filters=[object()])


def test_live_proxy_without_pytest(origin: OriginServer) -> None:
    """start_proxy on the session's reactor thread, as code outside a fixture would."""
    thread = fwproxy.testing.pytest_plugin.global_reactor_thread()
    with fwproxy.testing.start_proxy(thread) as proxy:
        assert fetch(proxy, f"{origin.url}/bytes/3")[0] == 200
        assert len(proxy.wait_for_records(1)) == 1
    assert thread.running


# -- in memory ------------------------------------------------------------------------------------


def test_harness_runs_filters_after_builtins() -> None:
    seen = Seen()
    with Harness(filters=[seen]) as h:
        c = h.connect(("10.1.1.1", 40000))  # not a local client: the acl built-in denies
        c.send(get())
        assert status_of(c.received()) == 403
        c = h.connect()
        c.send(get(b"http://example.com/ok"))
        up = h.accept()
        assert (up.host, up.port) == (ORIGIN_IP, 80) and up.relay
        up.send(OK5)
        assert c.received() == OK5
        assert seen.paths == [b"/ok"]
        assert [r.status for r in h.records] == [403, 200]
        assert h.failures == []


def test_fwproxy_harness_fixture(fwproxy_harness: Callable[..., Harness]) -> None:
    h = fwproxy_harness(WORLD_CONFIG, filters=[Raises()])
    assert h.config.timeouts.connect == 3
    c = h.connect()
    c.send(get())
    assert status_of(c.received()) == 500
    assert len(h.take_failures()) == 1  # else the fixture would fail the test


def test_harness_collects_failures_until_closed() -> None:
    log = Logger()
    h = Harness(filters=[Raises()])
    c = h.connect()
    c.send(get())
    assert status_of(c.received()) == 500
    assert [f.check(RuntimeError) for f in h.take_failures()] == [RuntimeError]
    h.close()
    quiet = Harness(watch_log=False)
    try:
        raise ValueError("logged")
    except ValueError:
        log.failure("after the first harness closed, while the second does not watch")
    assert h.failures == [] and quiet.failures == []


def test_world_runs_the_network_by_itself() -> None:
    world = World(["refuse", "accept"], ["cl"])
    world.send(get())
    assert status_of(world.client_t.value()) == 502
    world.send(get())
    assert world.client_t.value().endswith(b"\r\n\r\nok")
    assert world.forwarded() == 1
    world.run_out_the_clock()
    assert world.client_lost


def test_fake_resolver() -> None:
    r = FakeResolver({"extra.test": ["192.0.2.5"]})
    assert r.resolve("example.com") == [ORIGIN_IP]
    assert r.resolve("extra.test") == ["192.0.2.5"]
    assert r.resolve("gone.test") == [] and r.resolve("unknown.test") == []
    assert r.resolve("::1") == ["::1"]
    d = r.resolve("slow.test")
    assert not isinstance(d, list) and not d.called
    assert [host for host, _ in r.pending] == ["slow.test"]
    assert not isinstance(FakeResolver(hang=True).resolve("example.com"), list)
    assert r.calls == ["example.com", "extra.test", "gone.test", "unknown.test", "::1", "slow.test"]


def test_failure_log_and_recorder_filter() -> None:
    with FailureLog() as failures:
        try:
            raise KeyError("x")
        except KeyError:
            Logger().failure("boom")
        Logger().info("not a failure")
    assert [f.check(KeyError) for f in failures.take()] == [KeyError]
    with pytest.raises(ValueError, match="^key: "):
        recorder_filter({}, None)


def test_config_problems_name_the_source() -> None:
    with pytest.raises(ConfigError) as info:
        Harness('[timeouts]\nconnect = "soon"\n')
    assert info.value.problems[0].startswith("<Harness config>:2: timeouts.connect")


# -- the entry point and docs/testing.md -------------------------------------------------------


def test_pytest11_entry_point_is_installed() -> None:
    found = [ep for ep in importlib.metadata.entry_points(group="pytest11") if ep.name == "fwproxy"]
    assert found, "no pytest11 entry point 'fwproxy': reinstall, pip install -e '.[test]'"
    assert found[0].value == "fwproxy.testing.pytest_plugin"
    assert found[0].load() is fwproxy.testing.pytest_plugin


FILE_HEADER = re.compile(r"# (\w+\.py)\n")


def doc_files(doc: Path, every: bool = True) -> dict[str, str]:
    """The ```python blocks of ``doc`` that start with ``# NAME.py``, by NAME.py; with
    ``every``, each block must."""
    files = {}
    for block in re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), re.S):
        m = FILE_HEADER.match(block)
        assert m or not every, f"a block in {doc.name} has no '# NAME.py' line: {block[:80]!r}"
        if m:
            files[m.group(1)] = block
    return files


def run_doc_files(files: dict[str, str], where: Path, pythonpath: str = "") -> None:
    """Write ``files`` to ``where``; run the ``example_*.py`` scripts, then pytest on the
    ``test_*.py`` files; every script must exit 0 and every test pass."""
    tests = 0
    for name, text in files.items():
        (where / name).write_text(text, encoding="utf-8")
        if name.startswith("test_"):
            tests += len(re.findall(r"^def test_", text, re.M))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH")) if p)
    for name in sorted(n for n in files if n.startswith("example_")):
        out = subprocess.run(
            [sys.executable, name], cwd=where, env=env, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, f"{name}: {out.stdout[-2000:]}{out.stderr[-2000:]}"
    assert tests, sorted(files)
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(where)],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = out.stdout[-3000:] + out.stderr[-2000:]
    assert out.returncode == 0, report
    assert re.search(rf"\b{tests} passed\b", out.stdout), report


def test_docs_testing_examples_pass(tmp_path: Path) -> None:
    """A filter author's tests, written from docs/testing.md alone, pass with pytest."""
    files = doc_files(ROOT / "docs" / "testing.md")
    assert {"stamp.py", "test_stamp_live.py", "test_stamp_memory.py"} <= set(files)
    run_doc_files(files, tmp_path)


def test_docs_filters_testing_section_passes(tmp_path: Path) -> None:
    """docs/filters.md's testing example, against the acme_tagger example package."""
    files = doc_files(ROOT / "docs" / "filters.md", every=False)
    assert files and all(name.startswith("test_") for name in files), sorted(files)
    for text in files.values():
        assert "tests." not in text and "_fakes" not in text  # public names only
    run_doc_files(files, tmp_path, str(ROOT / "docs" / "examples" / "acme_tagger"))


def test_untaken_failure_fails_the_test(tmp_path: Path) -> None:
    """The fixture's own end-of-test check, seen from outside a pytest run."""
    (tmp_path / "test_inner.py").write_text(INNER, encoding="utf-8")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "2 passed, 1 error" in out.stdout, out.stdout[-3000:]
    assert "ERROR test_inner.py::test_leaves_a_failure" in out.stdout
    assert "1 failure(s) logged and not taken with proxy.take_failures()" in out.stdout
    assert "RuntimeError: inner bug" in out.stdout


INNER = """
import socket

from zope.interface import implementer

from fwproxy.interfaces import IRequestFilter


@implementer(IRequestFilter)
class Raises:
    def requestReceived(self, request):
        raise RuntimeError("inner bug")


def test_leaves_a_failure(fwproxy):
    proxy = fwproxy(filters=[Raises()])
    with socket.create_connection(("127.0.0.1", proxy.port)) as s:
        s.sendall(b"GET http://127.0.0.1:9/ HTTP/1.1\\r\\nHost: 127.0.0.1:9\\r\\n\\r\\n")
        assert s.recv(100).startswith(b"HTTP/1.1 500 ")
    proxy.wait_for_records(1)


def test_next_test_is_clean(fwproxy):
    assert fwproxy().failures == []
"""
