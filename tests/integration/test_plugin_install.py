"""Plugins as they are deployed: the ``twistd fwproxy`` dropin installed by a plain
``pip install``, and a third party's filter found through its own ``twisted/plugins`` dropin
or by dotted path."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest
from fwp_support import REPO, TWISTD, child_env, endpoint, free_port, proxy_config

# -- (a) pip install . ------------------------------------------------------------------------

_COPY_IGNORE = shutil.ignore_patterns(
    ".venv",
    ".git",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "dropin.cache",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
)

_CHECK_INSTALLED = textwrap.dedent(
    """
    import os, sys
    target = os.path.realpath(sys.argv[1])
    repo = os.path.realpath(sys.argv[2])

    def under(path, root):
        return os.path.realpath(path).startswith(root + os.sep)

    assert not any(os.path.realpath(p or os.getcwd()) == repo for p in sys.path), sys.path

    # a namespace portion only: an __init__.py here would shadow Twisted's own packages
    assert not os.path.exists(os.path.join(target, "twisted", "__init__.py")), "twisted/__init__"
    assert not os.path.exists(os.path.join(target, "twisted", "plugins", "__init__.py")), (
        "twisted/plugins/__init__.py"
    )

    import twisted
    assert not under(twisted.__file__, target), twisted.__file__

    from twisted.application.service import IServiceMaker
    from twisted.plugin import getPlugins
    makers = [m for m in getPlugins(IServiceMaker) if m.tapname == "fwproxy"]
    assert len(makers) == 1, [m.tapname for m in getPlugins(IServiceMaker)]
    dropin = sys.modules["twisted.plugins.fwproxy_plugin"]
    assert under(dropin.__file__, target), dropin.__file__

    import importlib
    tap = importlib.import_module(makers[0].module)
    assert under(tap.__file__, target), tap.__file__
    import fwproxy, fwproxy.config
    assert under(fwproxy.__file__, target), fwproxy.__file__
    assert os.path.isfile(os.path.join(target, "fwproxy", "default.toml"))
    config = fwproxy.config.load()
    assert config.listen == ("tcp:3128:interface=127.0.0.1",), config.listen
    print("INSTALLED-OK")
    """
)


def _can_build_without_isolation() -> bool:
    """setuptools' build backend needs ``wheel`` for bdist_wheel before setuptools 70.1."""
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return False
    major, minor = (int(x) for x in version.split(".")[:2])
    return importlib.util.find_spec("wheel") is not None or (major, minor) >= (70, 1)


@pytest.mark.slow
def test_pip_install_target_installs_the_dropin(tmp_path, proxy):
    src = tmp_path / "src"
    target = tmp_path / "target"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copytree(REPO, src, ignore=_COPY_IGNORE)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-input",
        "--disable-pip-version-check",
        "--target",
        str(target),
        str(src),
    ]
    if _can_build_without_isolation():
        cmd.insert(5, "--no-build-isolation")
    # else: this interpreter cannot build a wheel by itself; pip fetches the build
    # requirements of pyproject.toml (setuptools, wheel) from the package index
    env = child_env(repo=False)
    env.pop("PYTHONPATH")
    pip = subprocess.run(
        cmd, check=False, capture_output=True, text=True, env=env, cwd=str(elsewhere), timeout=300
    )
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]

    check = subprocess.run(
        [sys.executable, "-c", _CHECK_INSTALLED, str(target), str(REPO)],
        check=False,
        capture_output=True,
        text=True,
        env=child_env([target], repo=False),
        cwd=str(elsewhere),
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "INSTALLED-OK" in check.stdout

    # and twistd runs the installed copy
    help_ = subprocess.run(
        [*TWISTD, "fwproxy", "--help"],
        check=False,
        capture_output=True,
        text=True,
        env=child_env([target], repo=False),
        cwd=str(elsewhere),
        timeout=60,
    )
    assert help_.returncode == 0, help_.stdout + help_.stderr
    assert "--config" in help_.stdout
    port = free_port()
    p = proxy.start(
        proxy_config([endpoint("127.0.0.1", port)]),
        port=port,
        extra_pythonpath=[target],
        repo=False,
        cwd=elsewhere,
    )
    with socket.create_connection(p.address, timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = s.makefile("rb").read()
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]


# -- (b) a third-party filter -----------------------------------------------------------------

ACME_PACKAGE = textwrap.dedent(
    '''
    """ACME's filters for fwproxy: a third-party package, written from fwproxy.interfaces."""

    from twisted.plugin import IPlugin
    from zope.interface import implementer

    from fwproxy.interfaces import IFilterFactory, IRequestFilter


    @implementer(IRequestFilter)
    class Tagger:
        def requestReceived(self, request):
            request.headers.add("X-Acme", "1")
            return None


    @implementer(IFilterFactory)
    class TaggerFactory:
        """Exactly what fwproxy.interfaces.IFilterFactory documents."""

        def __init__(self, name):
            self.name = name

        def build(self, options, context):
            if options:
                raise ValueError(f"options: unknown {', '.join(options)}")
            return Tagger()


    @implementer(IFilterFactory, IPlugin)
    class TaggerPluginFactory(TaggerFactory):
        """The same, also declaring twisted.plugin.IPlugin."""


    tagger_factory = TaggerFactory("acme.tagger")
    tagger_plugin_factory = TaggerPluginFactory("acme.tagger-iplugin")
    '''
)

ACME_DROPIN = textwrap.dedent(
    '''
    """twisted.plugin dropin: makes ACME's filters available to fwproxy by name."""

    from acmefilters import tagger_factory, tagger_plugin_factory
    '''
)


@pytest.fixture
def acme(tmp_path):
    """A directory to put on PYTHONPATH holding the ``acmefilters`` package and its dropin
    ``twisted/plugins/acme_plugin.py`` (no ``__init__.py`` in ``twisted/`` or
    ``twisted/plugins/``)."""
    root = tmp_path / "acme"
    (root / "acmefilters").mkdir(parents=True)
    (root / "acmefilters" / "__init__.py").write_text(ACME_PACKAGE)
    (root / "twisted" / "plugins").mkdir(parents=True)
    (root / "twisted" / "plugins" / "acme_plugin.py").write_text(ACME_DROPIN)
    return root


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("acme.tagger", id="dropin-as-documented"),
        pytest.param("acme.tagger-iplugin", id="dropin-declaring-IPlugin"),
        pytest.param("acmefilters.tagger_factory", id="dotted-path"),
    ],
)
def test_third_party_filter_tags_requests(proxy, origin, run_curl, acme, name):
    p = proxy.start_with(filters=[{"name": name}], extra_pythonpath=[acme])
    r = run_curl("-x", p.url, f"{origin.url}/headers")
    assert r.status == 200, r.stderr
    rec = origin.last()
    assert rec.headers("x-acme") == [b"1"], rec.header_lines


def test_third_party_filter_known_to_check_config(acme):
    """``fwproxy check-config`` finds the dropin's filter too (no proxy started)."""
    config = acme.parent / "acme.toml"
    config.write_text(
        proxy_config([endpoint("127.0.0.1", 3128)], filters=[{"name": "acme.tagger"}])
    )
    proc = subprocess.run(
        [sys.executable, "-m", "fwproxy.cli", "check-config", str(config)],
        check=False,
        capture_output=True,
        text=True,
        env=child_env([acme]),
        cwd=str(acme.parent),
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
