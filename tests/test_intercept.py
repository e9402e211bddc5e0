"""The interception CA (``fwproxy ca init``), leaf certificates and the ``[intercept]`` section:
sans-IO, no sockets."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL

from fwproxy import cacert, cli
from fwproxy.acl import AclContext, client_ip
from fwproxy.config import ConfigError, loads
from fwproxy.leafcerts import LeafCerts, leaf_certificate, normalise, select_alpn
from fwproxy.logformat import TLS_NOTE, as_json, combined, squid
from fwproxy.record import TransactionRecord


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("ca") / "made"
    cacert.init(str(directory))
    return directory


@pytest.fixture(scope="module")
def ca(ca_dir: Path) -> cacert.CA:
    return cacert.load(str(ca_dir))


# -- fwproxy ca init ------------------------------------------------------------------------


def test_init_makes_a_ca_with_a_private_key(ca_dir: Path, ca: cacert.CA) -> None:
    assert stat.S_IMODE(os.stat(ca_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(ca_dir / "ca.key").st_mode) == 0o600
    constraints = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    usage = ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert "fwproxy" in ca.cert.subject.rfc4514_string()
    life = ca.cert.not_valid_after_utc - ca.cert.not_valid_before_utc
    assert life >= datetime.timedelta(days=3650)
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey)


def test_cli_ca_init_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "ca"
    assert cli.main(["ca", "init", str(target)]) == 0
    before = (target / "ca.pem").read_bytes()
    capsys.readouterr()
    assert cli.main(["ca", "init", str(target)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists already" in err and "ca.pem" in err
    assert (target / "ca.pem").read_bytes() == before


def test_init_refuses_when_only_the_key_is_there(tmp_path: Path) -> None:
    (tmp_path / "ca.key").write_text("x")
    with pytest.raises(cacert.CAError, match="ca.key exists already"):
        cacert.init(str(tmp_path))
    assert not (tmp_path / "ca.pem").exists()


def test_load_names_what_is_wrong(tmp_path: Path, ca_dir: Path) -> None:
    with pytest.raises(cacert.CAError, match="cannot read .*ca.pem"):
        cacert.load(str(tmp_path))
    other = tmp_path / "other"
    cacert.init(str(other))
    (tmp_path / "ca.pem").write_bytes((ca_dir / "ca.pem").read_bytes())
    (tmp_path / "ca.key").write_bytes((other / "ca.key").read_bytes())
    with pytest.raises(cacert.CAError, match="is not the key of the certificate"):
        cacert.load(str(tmp_path))


def test_load_refuses_a_certificate_that_is_not_a_ca(tmp_path: Path, ca: cacert.CA) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = leaf_certificate(ca, key, "example.test")
    (tmp_path / "ca.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "ca.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(cacert.CAError, match="not a CA certificate"):
        cacert.load(str(tmp_path))


@pytest.mark.parametrize("years", [-11, 1])
def test_load_refuses_a_ca_out_of_its_validity(tmp_path: Path, years: int) -> None:
    # an expired CA signs no usable leaf (one would end before it begins): say so at load
    cert, key = cacert.make_ca(
        datetime.datetime.now(datetime.UTC) + years * cacert.CA_VALIDITY / 10
    )
    (tmp_path / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "ca.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(cacert.CAError, match="ca.pem is valid from .* to .*: not now"):
        cacert.load(str(tmp_path))


# -- leaf certificates ------------------------------------------------------------------------


def _san(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def test_a_leaf_names_the_host_and_is_signed_by_the_ca(ca: cacert.CA) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = leaf_certificate(ca, key, "www.example.test")
    assert _san(leaf).get_values_for_type(x509.DNSName) == ["www.example.test"]
    assert leaf.issuer == ca.cert.subject
    leaf.verify_directly_issued_by(ca.cert)
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.not_valid_after_utc <= ca.cert.not_valid_after_utc


@pytest.mark.parametrize("name", ["127.0.0.1", "::1"])
def test_an_ip_literal_gets_an_ip_san(ca: cacert.CA, name: str) -> None:
    leaf = leaf_certificate(ca, ec.generate_private_key(ec.SECP256R1()), name)
    assert _san(leaf).get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(name)]


def test_normalise() -> None:
    assert normalise("WWW.Example.TEST.") == "www.example.test"
    assert normalise("[::1]") == "::1"


def test_contexts_are_cached_by_name_least_recently_used_dropped(ca: cacert.CA) -> None:
    leaves = LeafCerts(ca, cache_size=2)
    a = leaves.context("a.test")
    assert leaves.context("A.test.") is a and leaves.made == 1
    leaves.context("b.test")
    leaves.context("a.test")  # a is now the most recently used
    leaves.context("c.test")
    assert "a.test" in leaves and "c.test" in leaves and "b.test" not in leaves
    assert len(leaves) == 2 and leaves.made == 3
    assert leaves.context("b.test") is not None and leaves.made == 4


def test_one_key_pair_for_every_leaf(ca: cacert.CA) -> None:
    leaves = LeafCerts(ca)
    one = leaves.connection("one.test")
    two = leaves.connection("two.test")
    assert one.get_context() is not two.get_context()
    assert leaves.key is not None


def test_alpn_http11_only_never_an_alert(ca: cacert.CA) -> None:
    conn = LeafCerts(ca).connection("x.test")
    assert select_alpn(conn, [b"h2", b"http/1.1"]) == b"http/1.1"
    assert conn.alpn_refused == ()
    assert select_alpn(conn, [b"h2"]) is SSL.NO_OVERLAPPING_PROTOCOLS
    assert conn.alpn_refused == (b"h2",)


# -- [intercept] ----------------------------------------------------------------------------


def _config(ca_dir: Path | str, rules: str = '"bump all"', extra: str = "") -> str:
    return f"""
[acl.banks]
dstdomain = [".bank.test"]
[acl.sni_bump]
ssl_sni = ["www.example.test"]
[acl.lan]
src = ["10.0.0.0/8"]
[intercept]
ca = "{ca_dir}"
rules = [{rules}]
{extra}
"""


def _ctx(host: str, sni: str, client: str = "10.1.2.3") -> AclContext:
    return AclContext(client_ip(client), "CONNECT", host, 443, f"{host}:443", sni=sni)


def test_no_intercept_section_nothing_changes() -> None:
    assert loads("").intercept is None


def test_rules_first_match_wins_no_match_splices(ca_dir: Path) -> None:
    config = loads(_config(ca_dir, '"splice banks", "bump lan sni_bump", "bump lan !banks"'))
    intercept = config.intercept
    assert intercept is not None and intercept.cert_cache == 1000
    policy = intercept.policy
    assert policy.bump(_ctx("www.bank.test", "www.bank.test")) is None
    rule = policy.bump(_ctx("www.example.test", "www.example.test"))
    assert rule is not None and rule.text == "bump lan sni_bump"
    assert policy.bump(_ctx("other.test", "other.test")).text == "bump lan !banks"  # type: ignore[union-attr]
    assert policy.bump(_ctx("other.test", "other.test", client="192.0.2.1")) is None
    assert intercept.leaves.cache_size == 1000


def test_cert_cache_is_read(ca_dir: Path) -> None:
    config = loads(_config(ca_dir, extra="cert_cache = 5"))
    assert config.intercept is not None and config.intercept.leaves.cache_size == 5


@pytest.mark.parametrize(
    "rules, extra, problem",
    [
        ('"bump nosuch"', "", "intercept.rules: 'bump nosuch' uses 'nosuch', not defined"),
        ('"allow all"', "", 'must start with "bump" or "splice"'),
        ('"bump"', "", "names no ACL"),
        ('"bump all"', "cert_cache = 0", "intercept.cert_cache: must be at least 1"),
        ('"bump all"', "tls = 1", "intercept.tls: unknown key"),
    ],
)
def test_config_errors_name_the_line_and_key(
    ca_dir: Path, rules: str, extra: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as e:
        loads(_config(ca_dir, rules, extra), "fw.toml")
    [line] = e.value.problems
    assert line.startswith("fw.toml:") and problem in line, line


def test_a_bad_ca_directory_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        loads(_config(tmp_path), "fw.toml")
    [line] = e.value.problems
    assert line.startswith("fw.toml:9: intercept.ca: cannot read ") and "ca.pem" in line


def test_the_tunnel_line_says_what_became_of_its_tls() -> None:
    rec = TransactionRecord(
        client="10.0.0.1", method="CONNECT", target="example.com:443", status=200
    )
    rec.sni = "example.com"
    assert " tls=" not in squid(rec)
    rec.notes[TLS_NOTE] = "bumped"
    assert squid(rec).endswith(" sni=example.com tls=bumped")
    assert combined(rec).endswith(' "sni=example.com" "tls=bumped"')
    # and the json line, which has every field on every line
    assert json.loads(as_json(rec))["tls"] == "bumped"
    del rec.notes[TLS_NOTE]
    assert json.loads(as_json(rec))["tls"] is None


@pytest.mark.parametrize(
    "rules, extra, warning",
    [
        ('"bump all"', "[tunnel]\npeek_ports = []", "tunnel.peek_ports is empty"),
        ('"splice banks"', "", 'no "bump" rule'),
        ("", "", 'no "bump" rule'),
        (
            '"bump alt_port", "bump all"',
            '[acl.alt_port]\nport = ["8443"]',
            "'bump alt_port' matches no port of tunnel.peek_ports (443): it never bumps",
        ),
        (
            '"bump !https"',
            '[acl.https]\nport = ["443"]',
            "'bump !https' matches no port of tunnel.peek_ports (443)",
        ),
    ],
)
def test_rules_that_bump_nothing_are_warned_of(
    ca_dir: Path, rules: str, extra: str, warning: str
) -> None:
    # [intercept] comes before the extra sections: they end the [intercept] table
    config = loads(_config(ca_dir, rules, "cert_cache = 10\n" + extra), "fw.toml")
    [line] = [w for w in config.warnings if "intercept" in w]
    assert line.startswith("fw.toml: intercept.rules: ") and warning in line, line


@pytest.mark.parametrize(
    "rules, extra",
    [
        ('"bump all"', ""),
        ('"bump alt_port"', '[tunnel]\npeek_ports = [443, 8443]\n[acl.alt_port]\nport = ["8443"]'),
        ('"bump !alt_port"', '[acl.alt_port]\nport = ["8443"]'),
    ],
)
def test_rules_that_can_bump_are_not_warned_of(ca_dir: Path, rules: str, extra: str) -> None:
    config = loads(_config(ca_dir, rules, "cert_cache = 10\n" + extra), "fw.toml")
    assert not [w for w in config.warnings if "intercept" in w], config.warnings


def test_check_config_prints_the_warning(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "fw.toml"
    path.write_text(_config(ca_dir, extra="[tunnel]\npeek_ports = []"))
    assert cli.main(["check-config", str(path)]) == 0
    assert "warning: " in capsys.readouterr().err
    assert cli.main(["check-config", "--strict", str(path)]) == 1
    assert "tunnel.peek_ports is empty" in capsys.readouterr().err


def test_a_ca_key_others_may_read_is_warned_of(ca_dir: Path) -> None:
    key = ca_dir / "ca.key"
    assert loads(_config(ca_dir, '"bump all"'), "fw.toml").warnings == ()  # 0600 from ca init
    key.chmod(0o644)
    try:
        warnings = loads(_config(ca_dir, '"bump all"'), "fw.toml").warnings
    finally:
        key.chmod(0o600)
    [line] = warnings
    assert line.startswith("fw.toml: intercept.ca: ") and "(mode 0644)" in line
    assert f"chmod 600 {key}" in line
