"""The ``fwproxy`` console script as it is installed: ``pip install .`` and ``pip install -e .``
(what scripts/test makes) into a temporary virtual environment, then ``fwproxy --version`` and
``fwproxy run`` from an unrelated directory, with nothing on PYTHONPATH.

An editable install does not expose the ``twisted/plugins`` dropin to ``twistd``'s plugin
search; ``fwproxy run`` must not need it. The temporary environment gets fwproxy's dependencies
from this interpreter's site-packages (a ``.pth`` line: no download), and pip builds without
isolation, as tests/integration/test_plugin_install.py does.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import signal
import site
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from fwp_support import REPO, child_env, endpoint, free_port, port_accepts, wait_until

_COPY_IGNORE = shutil.ignore_patterns(
    ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", "dropin.cache",
    ".pytest_cache", ".mypy_cache", ".ruff_cache",
)  # fmt: skip


def _pip_can_do_it() -> str | None:
    """Why this interpreter cannot install into another environment offline, or None."""
    try:
        pip = tuple(int(x) for x in importlib.metadata.version("pip").split(".")[:2])
        setuptools = tuple(int(x) for x in importlib.metadata.version("setuptools").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return "pip or setuptools is missing"
    if pip < (22, 3):
        return "pip install --python needs pip 22.3"
    if setuptools < (64, 0):
        return "editable installs need setuptools 64"
    if importlib.util.find_spec("wheel") is None and setuptools < (70, 1):
        return "building a wheel without isolation needs the wheel package"
    return None


def _environment(tmp_path: Path) -> Path:
    """A virtual environment whose site-packages also sees this interpreter's (for Twisted,
    httptools...), but not this checkout: returns its python."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True, env=_env(),
    ).stdout.strip()  # fmt: skip
    (Path(purelib) / "_fwproxy_test_dependencies.pth").write_text(
        "\n".join(site.getsitepackages()) + "\n"
    )
    return python


def _env() -> dict[str, str]:
    env = child_env(repo=False)
    env.pop("PYTHONPATH")
    return env


@pytest.mark.slow
@pytest.mark.parametrize("editable", [False, True], ids=["pip-install", "pip-install-e"])
def test_installed_fwproxy_command(tmp_path: Path, editable: bool) -> None:
    reason = _pip_can_do_it()
    if reason:
        pytest.skip(reason)
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=_COPY_IGNORE)
    python = _environment(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-build-isolation", "--no-input", "--disable-pip-version-check",
         *(["-e"] if editable else []), str(src)],
        check=False, capture_output=True, text=True, env=_env(), cwd=str(elsewhere), timeout=300,
    )  # fmt: skip
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    fwproxy = python.parent / "fwproxy"
    assert fwproxy.exists(), "no fwproxy console script"

    where = subprocess.run(
        [str(python), "-c", "import fwproxy, importlib.metadata as m; "
         "print(fwproxy.__file__); print(m.version('fwproxy'))"],
        check=True, capture_output=True, text=True, env=_env(), cwd=str(elsewhere), timeout=60,
    ).stdout.split()  # fmt: skip
    home = src if editable else python.parents[1]
    assert Path(where[0]).resolve().is_relative_to(home.resolve()), where

    version = subprocess.run(
        [str(fwproxy), "--version"],
        check=False, capture_output=True, text=True, env=_env(), cwd=str(elsewhere), timeout=60,
    )  # fmt: skip
    assert (version.returncode, version.stdout) == (
        0,
        f"fwproxy {where[1]} (pure-Python build)\n",
    ), version.stderr

    port = free_port()
    out = tmp_path / "run.out"
    with open(out, "wb") as sink:
        proc = subprocess.Popen(
            [str(fwproxy), "run", "--listen", endpoint("127.0.0.1", port)],
            stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
            env=_env(), cwd=str(elsewhere),
        )  # fmt: skip
    try:
        wait_until(
            lambda: proc.poll() is not None or port_accepts("127.0.0.1", port), 20, "fwproxy run"
        )
        assert proc.poll() is None, out.read_text()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reply = s.makefile("rb").read()
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, out.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert "Traceback" not in out.read_text(), out.read_text()

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        busy = holder.getsockname()[1]
        failed = subprocess.run(
            [str(fwproxy), "run", "--listen", endpoint("127.0.0.1", busy)],
            check=False, capture_output=True, text=True, env=_env(), cwd=str(elsewhere),
            timeout=60,
        )  # fmt: skip
    assert failed.returncode == 1
    assert failed.stderr == (
        f"fwproxy: cannot listen on tcp:{busy}:interface=127.0.0.1: address already in use\n"
    ), failed.stdout + failed.stderr
