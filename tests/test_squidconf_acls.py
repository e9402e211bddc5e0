"""``acl`` lines converted with Squid's semantics (:mod:`fwproxy.squidconf.acls`,
:mod:`fwproxy.squidconf.values`): each snippet's exact tables and rules, and the converted
file loads in fwproxy."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.squidconf import FLOOR, acl, config, config_if_known, data, rules, run

from fwproxy.squidconf import values as V


@pytest.mark.parametrize(
    "value, cidrs",
    [
        ("10.0.0.0/8", ["10.0.0.0/8"]),
        ("10.0.0.0/255.0.0.0", ["10.0.0.0/8"]),
        ("10.1.2.3", ["10.1.2.3/32"]),
        (
            "192.168.1.10-192.168.1.20",
            ["192.168.1.10/31", "192.168.1.12/30", "192.168.1.16/30", "192.168.1.20/32"],
        ),
        ("10.0.1.0-10.0.3.0/24", ["10.0.1.0/24", "10.0.2.0/23"]),
        ("10.0.0.0-10.0.0.0/255.255.255.0", ["10.0.0.0/24"]),
        ("2001:db8::/32", ["2001:db8::/32"]),
        ("::1", ["::1/128"]),
        ("2001:db8::1-2001:db8::3", ["2001:db8::1/128", "2001:db8::2/127"]),
        ("all", ["0.0.0.0/0", "::/0"]),
        ("0.0.0.0/0.0.0.0", ["0.0.0.0/0", "::/0"]),
        ("ipv4", ["0.0.0.0/0"]),
    ],
)
def test_networks(value: str, cidrs: list[str]) -> None:
    assert V.networks(value)[0] == cidrs


@pytest.mark.parametrize(
    "value",
    [
        "xxx.xxx.xxx.xxx",
        "10.0.0.300",
        "10.0.0.0/33",
        "10.0.0.0/255.0.255.0",
        "10.0.0.9-10.0.0.1",
        "10.0.0.1-::1",
        "10.0.0.0/",
    ],
)
def test_bad_networks(value: str) -> None:
    with pytest.raises(ValueError, match="10|xxx"):
        V.networks(value)


def test_mask_cutting_bits_is_noted() -> None:
    assert V.networks("127.0.0.1/24") == (
        ["127.0.0.0/24"],
        "'127.0.0.1/24': the mask cuts bits off the address; Squid matches 127.0.0.0/24",
    )


def test_story_placeholder_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    result = run(tmp_path, "acl allowed_ips src xxx.xxx.xxx.xxx\nhttp_access allow allowed_ips\n")
    assert result.exit_code == 1
    path = tmp_path / "squid.conf"
    assert (
        f"{path}:1: acl: error: acl allowed_ips: 'xxx.xxx.xxx.xxx' is not an IP address "
        in (result.errors[0])
    )
    assert any(e.startswith(f"{path}:2: http_access: not translated (") for e in result.errors)
    forced = run(
        tmp_path, "acl allowed_ips src xxx.xxx.xxx.xxx\nhttp_access allow allowed_ips\n", force=True
    )
    assert forced.exit_code == 0
    assert all(m.endswith("(dropped: --force)") for m in forced.errors)
    # the rule is gone, Squid's default after an allow line stays
    assert rules(forced) == [*FLOOR, "deny all"]
    config(forced)


def test_names_are_case_insensitive_and_accumulate(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        "acl Office src 10.0.0.0/8\nacl office src 10.1.0.0/16\nhttp_access allow OFFICE\n",
    )
    assert acl(result, "Office") == {"src": ["10.0.0.0/8", "10.1.0.0/16"]}
    assert rules(result) == [*FLOOR, "allow Office", "deny all"]
    config(result)


def test_another_type_for_an_existing_name_is_an_error(tmp_path: Path) -> None:
    result = run(tmp_path, "acl a src 10.0.0.0/8\nacl a dst 10.0.0.0/8\nhttp_access allow a\n")
    assert result.exit_code == 1
    assert "ACL 'a' already exists with another type (src)" in result.errors[0]


def test_builtins_have_squids_meaning(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        "http_access allow localhost manager\nhttp_access deny to_localhost\n"
        "http_access allow CONNECT\nhttp_access deny all\n",
    )
    assert acl(result, "localhost") == {"src": ["127.0.0.1/32", "::1/128"]}
    assert acl(result, "manager") == {
        "url_regex": ["(?i)^cache_object://", "^[^:]+://[^/]+/squid-internal-mgr/"]
    }
    assert acl(result, "CONNECT") == {"method": ["CONNECT"]}
    # fwproxy's to_localhost is Squid 5's set: used as is
    assert "to_localhost" not in data(result)["acl"]
    # (the floor's "deny to_localhost" is that line already)
    assert rules(result) == [*FLOOR, "allow localhost manager", "allow CONNECT", "deny all"]
    config(result)


def test_builtin_with_values_added_and_colliding_names(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        "acl localhost src 10.9.9.9\nacl to_localhost dst 10.0.0.0/8\n"
        "acl to_linklocal dst 169.254.0.0/16\nacl manager proto cache_object\n"
        "acl 9lives src 10.0.0.0/8\nacl all src all\n"
        "http_access deny to_localhost\nhttp_access deny to_linklocal\n"
        "http_access allow localhost 9lives\nhttp_access deny ALL\n",
    )
    assert result.exit_code == 0, result.messages
    assert acl(result, "localhost") == {"src": ["127.0.0.1/32", "::1/128", "10.9.9.9/32"]}
    assert acl(result, "squid_to_localhost") == {
        "dst": ["127.0.0.0/8", "0.0.0.0/32", "::1/128", "::/128", "10.0.0.0/8"]
    }
    assert acl(result, "squid_to_linklocal") == {"dst": ["169.254.0.0/16"]}
    assert rules(result) == [
        *FLOOR,
        "deny squid_to_localhost",
        "deny squid_to_linklocal",
        "allow localhost squid_9lives",
        "deny all",
    ]
    assert any("ignored, as Squid does" in m for m in result.messages)
    config(result)


def test_host_name_in_src_is_an_error(tmp_path: Path) -> None:
    result = run(tmp_path, "acl a dst www.example.com\nhttp_access deny a\n")
    assert result.exit_code == 1
    assert "resolved by Squid once, at start-up" in result.errors[0]


def test_domains_and_regexes(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        "acl d dstdomain .Example.com foo.org\n"
        "acl r dstdom_regex -i \\.example\\.(com|org)$\n"
        "acl u url_regex -i ^http://[[:alpha:]]+\\.test/ +i /CaseSensitive/\n"
        "http_access allow localhost d r u\n",
    )
    assert acl(result, "d") == {"dstdomain": [".Example.com", "foo.org"]}
    assert acl(result, "r") == {"dstdom_regex": ["\\.example\\.(com|org)$"]}
    assert acl(result, "u") == {"url_regex": ["(?i)^http://[a-zA-Z]+\\.test/", "/CaseSensitive/"]}
    config(result)


def test_case_sensitive_domain_regex_with_capitals_is_noted(tmp_path: Path) -> None:
    result = run(tmp_path, "acl r dstdom_regex Example\nhttp_access deny r\n")
    assert any("Squid matches it case-sensitively" in m for m in result.messages)
    assert result.exit_code == 0


def test_bad_regex_is_an_error(tmp_path: Path) -> None:
    result = run(tmp_path, "acl u url_regex ^(unclosed\nhttp_access deny u\n")
    assert result.exit_code == 1
    assert "is not a valid regular expression" in result.errors[0]


def test_ports_methods_and_bad_ports(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        "acl p port 80 443 1025-65535\nacl m method get CONNECT\n"
        "acl bad port 0 70000 1-x\nhttp_access deny !p\nhttp_access deny bad\n"
        "http_access allow localhost m\n",
    )
    assert acl(result, "p") == {"port": [80, 443, "1025-65535"]}
    assert acl(result, "m") == {"method": ["get", "CONNECT"]}
    assert len([e for e in result.errors if "acl bad" in e]) == 3
    assert (
        rules(run(tmp_path, result_text := "acl p port 80\nhttp_access deny !p\n"))[-1]
        == "allow all"
    )
    assert result_text


def test_time_windows_include_their_last_minute(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        "acl work time MTWHF 08:00-17:00\nacl work time A 10:00-23:59\n"
        "acl night time 22:00-23:00\nhttp_access allow localhost work !night\n",
    )
    assert acl(result, "work") == {"time": ["MTWHF 08:00-17:01", "A 10:00-24:00"]}
    assert acl(result, "night") == {"time": ["22:00-23:01"]}
    config(result)


def test_bad_time_is_an_error(tmp_path: Path) -> None:
    result = run(tmp_path, "acl t time MX 08:00-07:00\nhttp_access allow t\n")
    assert result.exit_code == 1


def test_proxy_auth_needs_auth(tmp_path: Path) -> None:
    (tmp_path / "passwd").write_text("alice:{SHA}qUqP5cyxm6YcTAhz05Hph5gvu9M=\n")
    result = run(
        tmp_path,
        f"auth_param basic program /usr/lib/squid/basic_ncsa_auth "
        f"{tmp_path / 'passwd'}\nauth_param basic realm Corp proxy\n"
        "auth_param basic credentialsttl 2 hours\n"
        "acl users proxy_auth REQUIRED\nacl bob proxy_auth bob\n"
        "http_access deny bob\nhttp_access allow users\n",
    )
    assert result.exit_code == 0, result.messages
    assert data(result)["auth"] == {
        "htpasswd": str(tmp_path / "passwd"),
        "realm": "Corp proxy",
        "cache_ttl": 7200,
    }
    assert acl(result, "users") == {"proxy_auth": ["REQUIRED"]}
    assert rules(result) == [*FLOOR, "deny bob", "allow users", "deny all"]
    config(result)


def test_localport_myport_and_myportname(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        "http_port 3128\nhttp_port 127.0.0.1:3129 name=internal\n"
        "acl lp localport 3128 4000-4010\nacl old myport 3129\n"
        "acl pn myportname internal\nacl pn2 myportname 3128\n"
        "http_access allow lp old pn pn2\n",
    )
    assert result.exit_code == 0, result.messages
    assert acl(result, "lp") == {"localport": [3128, "4000-4010"]}
    assert acl(result, "old") == {"localport": [3129]}
    assert acl(result, "pn") == {"localport": [3129]}
    assert acl(result, "pn2") == {"localport": [3128]}
    config_if_known(result, "localport")


def test_unknown_port_name_is_an_error(tmp_path: Path) -> None:
    result = run(tmp_path, "acl pn myportname nope\nhttp_access allow pn\n")
    assert result.exit_code == 1 and "no http_port has name=nope" in result.errors[0]


def test_urlpath_regex(tmp_path: Path) -> None:
    result = run(tmp_path, "acl exe urlpath_regex -i \\.exe$\nhttp_access deny exe\n")
    assert acl(result, "exe") == {"urlpath_regex": ["(?i)\\.exe$"]}
    loaded = config_if_known(result, "urlpath_regex")
    assert loaded is None or loaded.access.rules[-2].text == "deny exe"


def test_server_name_without_peeking_is_the_connect_host(tmp_path: Path) -> None:
    result = run(tmp_path, "acl s ssl::server_name .example.com\nhttp_access allow localhost s\n")
    assert acl(result, "s") == {"dstdomain": [".example.com"]}
    config(result)


def test_untranslatable_type_only_matters_where_used(tmp_path: Path) -> None:
    unused = run(tmp_path, "acl ua browser Mozilla\nhttp_access allow localhost\n")
    assert unused.exit_code == 0 and unused.errors == []
    used = run(
        tmp_path, "acl ua browser Mozilla\nhttp_access deny ua\nhttp_access allow localhost\n"
    )
    assert used.exit_code == 1
    assert used.errors[0].endswith(
        "squid.conf:2: http_access: not translated (ACL 'ua' is Squid's 'browser' ACL type, "
        "which fwproxy has no equivalent of)"
    )


def test_unknown_acl_type_is_an_error_where_defined(tmp_path: Path) -> None:
    # Squid 5.7: "FATAL: Invalid ACL type 'SRC'"
    result = run(tmp_path, "acl a SRC 10.0.0.0/8\nhttp_access allow localhost\n")
    assert result.exit_code == 1
    assert "'SRC' is not an ACL type (Squid refuses to start)" in result.errors[0]


def test_squid6_builtin_to_linklocal_used_without_definition(tmp_path: Path) -> None:
    # Squid 6's default squid.conf says "http_access deny to_linklocal" without an acl line:
    # a built-in there (cf.data.pre: dst 169.254.0.0/16 fe80::/10), not an undefined name
    result = run(
        tmp_path,
        "http_access deny to_localhost\nhttp_access deny to_linklocal\n"
        "http_access allow localhost\nhttp_access deny all\n",
    )
    assert result.exit_code == 0, result.messages
    assert acl(result, "squid_to_linklocal") == {"dst": ["169.254.0.0/16", "fe80::/10"]}
    assert rules(result) == [*FLOOR, "deny squid_to_linklocal", "allow localhost", "deny all"]
    config(result)


def test_proxy_auth_without_translated_auth_is_not_translated(tmp_path: Path) -> None:
    # NTLM (or no auth_param at all) leaves no [auth]: a rule using proxy_auth cannot load
    result = run(
        tmp_path,
        "auth_param ntlm program /usr/bin/ntlm_auth\nacl auth proxy_auth REQUIRED\n"
        "http_access deny !auth\nhttp_access allow localhost\n",
    )
    assert result.exit_code == 1
    assert any(
        m.endswith(
            ":3: http_access: not translated (ACL 'auth' is proxy_auth, and no auth_param "
            "basic was translated)"
        )
        for m in result.errors
    )
    forced = run(
        tmp_path,
        "auth_param ntlm program /usr/bin/ntlm_auth\nacl auth proxy_auth REQUIRED\n"
        "http_access deny !auth\nhttp_access allow localhost\n",
        force=True,
    )
    assert rules(forced) == [*FLOOR, "allow localhost", "deny all"]
    config(forced)
