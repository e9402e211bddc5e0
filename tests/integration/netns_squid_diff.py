"""Run inside new network and mount namespaces (``unshare -n -m``, as root) by
tests/integration/test_squid_differential.py: the differential test of ``fwproxy convert-squid``
against Debian's real squid.

The namespace's loopback gets client addresses (:data:`CLIENTS`) and the destination range
198.18.0.0/15 (a local route: every address in it is this host), a private ``/etc/hosts``
(:data:`HOSTS`, bind-mounted) and ``/etc/resolv.conf`` (a name server on 127.0.0.1 that is not
there, so a name outside the hosts file fails at once) so that squid and fwproxy resolve the
same names to the same addresses; origins answer ``200`` on every address of the range on the
ports of :data:`PORTS`. For each corpus config (copied to a work directory, ``@DIR@`` replaced by
its path, a bcrypt password file written next to it), squid runs on the config with the lines a
test run needs (:data:`SQUID_RUN_LINES`), then fwproxy (``twistd -n fwproxy``) on what
:func:`fwproxy.squidconf.convert` made of it, on the same ports one after the other; both get the
same matrix of requests (client address x proxy port x destination x port x GET path or CONNECT
x credentials), sent from sockets bound to the client addresses, and only the access decisions
are compared: denied (403 or 407 from the proxy) or not. Prints one JSON object per config on
stdout; a table of the disagreements on stderr. Nothing leaves the namespace.

    unshare -n -m python netns_squid_diff.py REPO_ROOT WORK_DIR CORPUS_DIR [CONFIG.conf ...]

The namespace's network (addresses, hosts file, name server, origins) is netns_world.py's.

A config with a ``handwritten/NAME.toml`` is also run with that file (until the converter
exists, instead of the conversion), and one with ``handwritten/NAME.mutant.toml`` with that
too, which must disagree: the proof that the comparison can fail.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netns_world import CLIENTS, DUAL, HOSTS, PORTS, name_server, setup_namespace, start_origins

SQUID = "/usr/sbin/squid"
#: destinations: names of the hosts file (one in upper case), a name that does not resolve,
#: literal addresses with and without a name in the hosts file
DESTINATIONS = (
    *HOSTS,
    "WWW.Example.COM",
    "www.example.com.",
    DUAL[0],
    "nowhere.invalid",
    "198.18.0.10",
    "198.18.2.31",
    "198.18.3.3",
)
PATHS = ("/", "/img/a.GIF", "/%61dmin/x?q=1", "/squid-internal-mgr/menu")
USERS = {"alice": "Secret-1", "bob": "Secret-2"}
#: the credentials dimension, for configs that authenticate: none, valid ones, a wrong password
CREDENTIALS = (None, ("alice", "Secret-1"), ("bob", "Secret-2"), ("alice", "wrong"))
SQUID_RUN_LINES = """
# -- added for the differential test run
pid_filename {dir}/squid.pid
cache_log {dir}/cache.log
access_log stdio:{dir}/access.log
coredump_dir {dir}
cache deny all
dns_nameservers 127.0.0.1
shutdown_lifetime 0 seconds
pinger_enable off
"""
#: directives of a corpus config that would write outside the run's directory, or that this
#: squid cannot run with: left out of squid's copy only (none of them decides access)
SQUID_DROPPED = re.compile(r"^\s*(access_log|cache_log|pid_filename|cache_dir\s+null)\b", re.I)


@dataclass(frozen=True)
class Probe:
    """One request of the matrix."""

    client: str
    proxy_port: int
    method: str  # GET or CONNECT
    host: str
    port: int
    path: str
    user: str
    password: str
    #: for a PROXY-protocol port: the client the header names ("" otherwise)
    proxied: str = ""
    #: and the port on the balancer it names as the one the client connected to
    balancer_port: int = 0

    def wire(self) -> bytes:
        authority = f"{self.host}:{self.port}"
        auth = ""
        if self.user:
            token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            auth = f"Proxy-Authorization: Basic {token}\r\n"
        if self.method == "CONNECT":
            head = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
        else:
            shown = self.host if self.port == 80 else authority
            head = f"GET http://{shown}{self.path} HTTP/1.1\r\nHost: {shown}\r\n"
        header = ""
        if self.proxied:
            header = f"PROXY TCP4 {self.proxied} 198.18.9.9 40000 {self.balancer_port}\r\n"
        return f"{header}{head}{auth}Connection: close\r\n\r\n".encode()

    def label(self) -> str:
        who = f" as {self.user}:{self.password}" if self.user else ""
        what = (
            f"CONNECT {self.host}:{self.port}"
            if self.method == "CONNECT"
            else f"GET http://{self.host}:{self.port}{self.path}"
        )
        via = f" (PROXY: {self.proxied} to :{self.balancer_port})" if self.proxied else ""
        return f"{self.client} -> :{self.proxy_port}{via} {what}{who}"


def ask(probe: Probe, timeout: float = 15) -> int:
    """The status line's code the proxy answered ``probe`` with (0: no answer)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.bind((probe.client, 0))
            s.connect((probe.client, probe.proxy_port))
            s.sendall(probe.wire())
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return 0
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return int(m.group(1)) if m else 0


def denied(status: int) -> bool | None:
    """The access decision of an answer: denied (403, 407), let through, or no answer."""
    if status == 0:
        return None
    return status in (403, 407)


def run_matrix(probes: list[Probe]) -> list[int]:
    """The answers to ``probes``, many at a time, but one set of credentials after the other:
    squid keeps one cached entry per user name, and a wrong password arriving while the right
    one is being checked makes its answers depend on timing."""
    answers: dict[int, int] = {}
    batches: dict[tuple[str, str], list[int]] = {}
    for i, p in enumerate(probes):
        batches.setdefault((p.user, p.password), []).append(i)
    with concurrent.futures.ThreadPoolExecutor(max_workers=24) as pool:
        for batch in batches.values():
            for i, status in zip(batch, pool.map(ask, [probes[i] for i in batch]), strict=True):
                answers[i] = status
    return [answers[i] for i in range(len(probes))]


#: the balancer's ports a PROXY-protocol header names: one the proxy does not listen on, and
#: the proxy's own
BALANCER_PORTS = (8443, 3130)
#: a client that sends a PROXY-protocol header of its own (it is not the balancer)
SPOOFER = "10.2.0.7"


def proxy_protocol_ports(text: str) -> set[int]:
    """The ports of ``http_port`` lines with ``require-proxy-header``."""
    ports = re.findall(r"^\s*http_port\s+(?:\S*:)?(\d+)\b.*require-proxy-header", text, re.M)
    return {int(p) for p in ports}


def listening_ports(text: str) -> list[int]:
    """The ports of a squid config's ``http_port`` lines (the corpus puts them in the main
    file)."""
    ports = re.findall(r"^\s*http_port\s+(?:\S*:)?(\d+)\b", text, re.M | re.I)
    return sorted({int(p) for p in ports})


def wait_listening(ports: list[int], proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    pending = list(ports)
    while pending and time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", pending[0]), timeout=1).close()
            pending.pop(0)
        except OSError:
            time.sleep(0.05)
    if pending:
        raise RuntimeError(f"{what} did not listen on {pending}")


def wait_closed(ports: list[int]) -> None:
    deadline = time.monotonic() + 20
    for port in ports:
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                time.sleep(0.05)
            except OSError:
                break


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def run_squid(
    conf: Path, run_dir: Path, ports: list[int], probes: list[Probe]
) -> tuple[list[int], str]:
    text = conf.read_text()
    kept = "".join(
        line if not SQUID_DROPPED.match(line) else "# (left out for this run) " + line
        for line in text.splitlines(keepends=True)
    )
    squid_conf = run_dir / "squid.conf"
    squid_conf.write_text(kept + SQUID_RUN_LINES.format(dir=run_dir))
    out = open(run_dir / "squid.out", "wb")  # noqa: SIM115 - squid's output, for a failure
    proc = subprocess.Popen([SQUID, "-N", "-f", str(squid_conf)], stdout=out, stderr=out)
    try:
        wait_listening(ports, proc, "squid")
        return run_matrix(probes), ""
    except RuntimeError as e:
        out.flush()
        logs = [run_dir / "squid.out", run_dir / "cache.log"]
        said = "".join(p.read_text(errors="replace") for p in logs if p.exists())
        return [], f"{e}: {said[-2000:]}"
    finally:
        stop(proc)
        out.close()
        wait_closed(ports)


def run_fwproxy(
    repo: str, toml: Path, run_dir: Path, ports: list[int], probes: list[Probe]
) -> tuple[list[int], str]:
    env = dict(os.environ, PYTHONPATH=repo)
    log = open(run_dir / f"{toml.stem}.out", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
         "-n", "--pidfile=", "fwproxy", "--config", str(toml)],
        stdout=log, stderr=log, env=env, cwd=run_dir,
    )  # fmt: skip
    try:
        wait_listening(ports, proc, "fwproxy")
        return run_matrix(probes), ""
    except RuntimeError as e:
        log.flush()
        out = (run_dir / f"{toml.stem}.out").read_text(errors="replace")
        return [], f"{e}: {out[-2000:]}"
    finally:
        stop(proc)
        log.close()
        wait_closed(ports)


#: what makes the path of a request matter to a config (``manager`` is a url_regex)
_PATH_ACLS = re.compile(r"\b(url_regex|urlpath_regex|manager)\b", re.I)


def probes_for(text: str, ports: list[int]) -> list[Probe]:
    """The matrix for one config: credentials only where it authenticates, and every path
    only where a URL or path decides (the matrix is the run's time)."""
    creds: tuple[Any, ...] = CREDENTIALS if "proxy_auth" in text else (None,)
    paths = PATHS if _PATH_ACLS.search(text) else PATHS[:1]
    proxied = proxy_protocol_ports(text)
    out = []
    for proxy_port in proxied:  # the balancer (127.0.0.1) sends a header for each client
        for client in CLIENTS[1:]:
            for balancer_port in BALANCER_PORTS:
                for host in DESTINATIONS:
                    for port in PORTS:
                        for method, path in [("GET", p) for p in paths] + [("CONNECT", "")]:
                            out.append(
                                Probe(CLIENTS[0], proxy_port, method, host, port, path, "", "",
                                      client, balancer_port)
                            )  # fmt: skip
        # a client that is not the balancer sends a header naming an office address
        for host in DESTINATIONS:
            out.append(Probe(SPOOFER, proxy_port, "GET", host, 80, "/", "", "", "10.1.0.5", 3130))
    for client in CLIENTS:
        for proxy_port in [p for p in ports if p not in proxied]:
            for host in DESTINATIONS:
                for port in PORTS:
                    for cred in creds:
                        user, password = cred or ("", "")
                        for path in paths:
                            out.append(
                                Probe(client, proxy_port, "GET", host, port, path, user, password)
                            )
                        out.append(
                            Probe(client, proxy_port, "CONNECT", host, port, "", user, password)
                        )
    return out


def prepare_corpus(corpus: Path, work: Path) -> Path:
    """The corpus copied to ``work/corpus``, ``@DIR@`` replaced by that directory, readable by
    squid's unprivileged user, with the bcrypt password file the auth config names."""
    import bcrypt

    copy = work / "corpus"
    shutil.copytree(corpus, copy)
    for path in copy.rglob("*"):
        if path.is_file() and path.suffix in (".conf", ".txt"):
            path.write_text(path.read_text().replace("@DIR@", str(copy)))
    (copy / "files" / "passwd").write_text(
        "".join(
            f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
            for u, p in USERS.items()
        )
    )
    for path in [copy, *copy.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    return copy


def convert(conf: Path) -> tuple[str | None, dict[str, Any]]:
    """The converter's TOML for ``conf`` and what it said (``None``: no converter yet)."""
    try:
        from fwproxy.squidconf import convert as squid_convert
    except ImportError:
        return None, {"converter": "missing"}
    try:
        result = squid_convert(str(conf), force=False, guard=True)
    except Exception:  # noqa: BLE001 - a finding: the converter must never raise
        import traceback

        return None, {"converter": "raised", "traceback": traceback.format_exc()}
    said = {
        "exit_code": result.exit_code,
        "messages": [str(m) for m in result.messages],
        "errors": [str(e) for e in result.errors],
    }
    if result.exit_code != 0:
        result = squid_convert(str(conf), force=True, guard=True)
    return result.toml, said


def for_the_run(toml: str) -> str:
    """The converted TOML with what the run needs: no admin listener, and no throttling of
    failed logins (fwproxy answers 429 after ``max_failures`` from one address, squid has no
    such limit, and the matrix sends many wrong passwords from each client)."""
    toml = re.sub(r"^\[auth\]\s*$", "[auth]\nmax_failures = 0", toml, flags=re.M)
    if not re.search(r"^\[admin\]", toml, re.M):
        toml += "\n[admin]\nlisten = []\n"
    return toml


#: a squid ACL type that matches an IP-literal destination by its reverse-DNS name too
_RDNS_TYPES = re.compile(r"^\s*acl\s+\S+\s+(dstdomain|dstdom_regex)\s+(?!-n\b)", re.M | re.I)
NAMED_LITERALS = frozenset(HOSTS.values())
_DST = re.compile(r"^\s*acl\s+\S+\s+dst\s", re.M | re.I)
_LOCALPORT = re.compile(r"^\s*acl\s+\S+\s+localport\s", re.M | re.I)


def known_difference(probe: Probe, config_text: str) -> str | None:
    """Why squid and fwproxy may rightly disagree on ``probe``, or None.

    Squid's ``dstdomain`` and ``dstdom_regex`` (without ``-n``) match an IP-literal destination
    by its reverse-DNS name too (here: the hosts file's); fwproxy never looks a name up in
    reverse (a PTR record is the address owner's to write: an allowlist would admit whoever
    names their address after an allowed domain), so the decisions on a literal address that
    has a name differ where such an ACL decides.

    Squid's ``dst`` matches a name when *any* of its addresses is in the ACL; fwproxy evaluates
    the rules for each address and connects only to an allowed one. So ``deny`` by ``dst``
    denies a name with one address inside and one outside in squid, while fwproxy relays to
    the outside address only (it never connects to the denied one either way).

    Behind a PROXY-protocol port Squid's ``localport`` is the port the header names (squid
    5.7 replaces the connection's local address with the header's destination), fwproxy's the
    port of its own listener (Squid's ``myportname`` is that too)."""
    if probe.host in NAMED_LITERALS and _RDNS_TYPES.search(config_text):
        return "squid matches dstdomain/dstdom_regex by the literal address's reverse-DNS name"
    if probe.proxied and probe.balancer_port != probe.proxy_port and _LOCALPORT.search(config_text):
        return (
            "squid: localport behind PROXY protocol is the header's port; fwproxy: the listener's"
        )
    if probe.host == DUAL[0] and _DST.search(config_text):
        return "squid: dst matches a name when any of its addresses is in it; fwproxy decides per address"
    return None


def compare(
    probes: list[Probe], squid: list[int], fw: list[int], config_text: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(disagreements, known differences)``."""
    unknown, known = [], []
    for p, s, f in zip(probes, squid, fw, strict=True):
        if denied(s) != denied(f):
            why = known_difference(p, config_text)
            row = {"request": p.label(), "squid": s, "fwproxy": f}
            if why:
                known.append({**row, "why": why})
            else:
                unknown.append(row)
    return unknown, known


def main(repo: str, work_dir: str, corpus_dir: str, names: list[str]) -> None:
    sys.path.insert(0, repo)  # the converter of the tree under test
    work = Path(work_dir)
    corpus = prepare_corpus(Path(corpus_dir), work)
    setup_namespace(work)
    origins = start_origins()
    dns = name_server()
    confs = [corpus / n for n in names] if names else sorted(corpus.glob("*.conf"))
    results: dict[str, Any] = {}
    for conf in confs:
        started = time.monotonic()
        run_dir = work / "run" / conf.stem
        run_dir.mkdir(parents=True)
        shutil.chown(run_dir, "proxy")
        text = conf.read_text()
        ports = listening_ports(text) or [3128]
        probes = probes_for(text, ports)
        entry: dict[str, Any] = {"requests": len(probes), "runs": {}}
        squid, failed = run_squid(conf, run_dir, ports, probes)
        entry["squid_error"] = failed
        tomls: dict[str, Path] = {}
        converted, said = convert(conf)
        entry["convert"] = said
        if converted is not None:
            tomls["converted"] = run_dir / "converted.toml"
            tomls["converted"].write_text(for_the_run(converted))
        for variant in ("", ".mutant"):
            hand = corpus / "handwritten" / f"{conf.stem}{variant}.toml"
            if hand.exists():
                tomls[f"handwritten{variant}"] = hand
        for label, toml in tomls.items():
            fw, error = run_fwproxy(repo, toml, run_dir, ports, probes)
            run: dict[str, Any] = {"fwproxy_error": error}
            if squid and fw:
                with open(run_dir / f"{label}.tsv", "w") as f:
                    for p, sq, fp in zip(probes, squid, fw, strict=True):
                        f.write(f"{sq}\t{fp}\t{p.label()}\n")
                run["disagreements"], run["known"] = compare(probes, squid, fw, text)
                run["unanswered"] = [
                    {"request": p.label(), "squid": s, "fwproxy": f}
                    for p, s, f in zip(probes, squid, fw, strict=True)
                    if not s or not f
                ]
                run["denied_by_squid"] = sum(1 for s in squid if denied(s))
            entry["runs"][label] = run
            table(conf.name, label, run)
        entry["seconds"] = round(time.monotonic() - started, 1)
        results[conf.name] = entry
    for o in origins:
        o.shutdown()
    dns.close()
    print(json.dumps(results))


def table(config: str, label: str, run: dict[str, Any]) -> None:
    rows, known = run.get("disagreements") or [], run.get("known") or []
    print(f"== {config} ({label}): {len(rows)} disagreements, {len(known)} known", file=sys.stderr)
    for row in known[:20]:
        print(
            f"   known: squid {row['squid']:3}  fwproxy {row['fwproxy']:3}  {row['request']}"
            f" ({row['why']})",
            file=sys.stderr,
        )
    if run.get("fwproxy_error"):
        print(f"   fwproxy failed: {run['fwproxy_error']}", file=sys.stderr)
    for row in rows[:200]:
        print(
            f"   squid {row['squid']:3}  fwproxy {row['fwproxy']:3}  {row['request']}",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])
