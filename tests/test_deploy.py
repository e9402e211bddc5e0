"""The deployment files, checked by the tools their platforms use, and against fwproxy itself.

- ``Dockerfile``, ``etc/fwproxy-container.toml`` and the image's health check
  (``deploy/container/healthcheck.py``); the image itself is built and run by the slow
  ``deploy/container/test``.
- ECS Fargate (``deploy/ecs/*.json``): each file is the input of its API call, validated with
  botocore's ``ParamValidator`` against botocore's own service models (and their enums).
- Kubernetes (``deploy/kubernetes/*.yaml``): validated with kubernetes-validate, strictly, for
  Kubernetes :data:`K8S_VERSION` (the oldest version the manifests support: the ``preStop``
  ``sleep`` action) and the newest schema it has.
- systemd (``etc/fwproxy.service``, ``etc/fwproxy.socket``): ``systemd-analyze verify``, and the
  unit's own command line run on a socket passed the way systemd passes it
  (``systemd-socket-activate``, on loopback).

Every timing that must fit the drain (``timeouts.drain``) is read from fwproxy's configuration,
not restated here.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from support.proxyproc import child_env, free_port, port_accepts
from support.servers import OriginServer, running, wait_until
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.protocols.haproxy import proxyEndpoint

from fwproxy.config import Config, ConfigError, Timeouts, load, loads, validate_endpoint

REPO = Path(__file__).resolve().parent.parent
ECS = REPO / "deploy" / "ecs"
K8S = REPO / "deploy" / "kubernetes"
CONTAINER_CONFIG = REPO / "etc" / "fwproxy-container.toml"
UID = 10001
#: the Kubernetes version the manifests are written for (and validated against)
K8S_VERSION = "1.32.0"
#: the newest schema kubernetes-validate has here, to catch removals
K8S_NEWEST = "1.37.0"
#: what an orchestrator's grace period must leave beyond the drain (logs flushed, exit)
MARGIN = 5


def _drain(config_text: str | None = None) -> float:
    if config_text is None:
        return Timeouts().drain
    return loads(config_text).timeouts.drain


# -- the image ---------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_is_multi_stage_from_a_base_argument() -> None:
    instructions = dockerfile()
    assert instructions[0][0] == "ARG" and instructions[0][1].startswith("BASE=")
    froms = [rest for word, rest in instructions if word == "FROM"]
    assert len(froms) == 2 and all(f.startswith("${BASE}") for f in froms), froms
    assert "COPY --from=build /opt/fwproxy /opt/fwproxy" in [
        f"COPY {rest}" for word, rest in instructions if word == "COPY"
    ]


def test_dockerfile_runtime_settings() -> None:
    final = dockerfile()
    final = final[max(i for i, (w, _) in enumerate(final) if w == "FROM") :]
    settings = {word: rest for word, rest in final}
    assert settings["USER"] == f"{UID}:{UID}"  # numeric: runAsNonRoot can check it
    assert settings["STOPSIGNAL"] == "SIGTERM"
    assert "/opt/fwproxy/healthcheck.py" in settings["HEALTHCHECK"]
    assert json.loads(settings["CMD"]) == ["run", "--config", "/etc/fwproxy/fwproxy.toml"]
    assert settings["ENTRYPOINT"] == '["/opt/fwproxy/bin/fwproxy"]'
    assert f"COPY {CONTAINER_CONFIG.relative_to(REPO)} /etc/fwproxy/fwproxy.toml" in [
        f"COPY {rest}" for word, rest in final if word == "COPY"
    ]


def test_dockerignore_keeps_what_the_build_needs() -> None:
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    needed = {"fwproxy", "twisted", "etc", "deploy", "setup.cfg", "pyproject.toml", "README.md"}
    assert not ignored & needed
    assert {".git", ".venv"} <= ignored


def test_container_config() -> None:
    config = load(str(CONTAINER_CONFIG))
    assert config.listen == ("tcp:3128",)
    assert config.watch_config
    assert config.log["access"] == "-" and config.log["format"] == "json"
    assert config.warnings == ()
    src = {str(n) for n in config.acls["private_clients"].networks}  # type: ignore[attr-defined]
    assert src == {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"}
    rules = [r.text for r in config.access.rules]
    assert rules[:3] == ["deny to_linklocal", "deny to_localhost", "deny to_self"]
    assert rules[-1] == "deny all"


def healthcheck() -> ModuleType:
    path = REPO / "deploy" / "container" / "healthcheck.py"
    spec = importlib.util.spec_from_file_location("fwproxy_healthcheck", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_healthcheck_proxy_header_is_a_v2_local_command() -> None:
    """What a ``haproxy:`` listener (Twisted's ``proxyEndpoint``) makes of the header: a LOCAL
    command, so the connection keeps its real peer, and the request follows."""
    hc = healthcheck()
    received: list[bytes] = []

    class Recorder(Protocol):
        def dataReceived(self, data: bytes) -> None:
            received.append(data)

    reactor = MemoryReactor()
    proxyEndpoint(TCP4ServerEndpoint(reactor, 3128)).listen(Factory.forProtocol(Recorder))
    factory = reactor.tcpServers[0][1]
    peer = IPv4Address("TCP", "127.0.0.1", 40000)
    wrapper = factory.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer)
    wrapper.makeConnection(transport)
    wrapper.dataReceived(hc.PROXY_V2_LOCAL + b"GET /healthz")
    assert received == [b"GET /healthz"] and not transport.disconnecting
    assert wrapper.getPeer() == peer


def test_healthcheck_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    hc = healthcheck()
    monkeypatch.delenv("FWPROXY_HEALTH_ADDR", raising=False)
    monkeypatch.delenv("FWPROXY_HEALTH_PROXY_PROTOCOL", raising=False)
    assert hc.parse_args([]) == ("127.0.0.1", 3128, False)
    assert hc.parse_args(["--proxy-protocol", "[::1]:8080"]) == ("::1", 8080, True)
    monkeypatch.setenv("FWPROXY_HEALTH_ADDR", "127.0.0.1:9")
    monkeypatch.setenv("FWPROXY_HEALTH_PROXY_PROTOCOL", "1")
    assert hc.parse_args([]) == ("127.0.0.1", 9, True)
    with pytest.raises(SystemExit, match="not HOST:PORT"):
        hc.parse_args(["3128"])


class _Answering:
    """A loopback server answering one status line per connection, keeping what it read."""

    def __init__(self, status: bytes) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.status = status
        self.received: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data.split(b"QUIT\n", 1)[-1]:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            self.received.append(data)
            conn.sendall(self.status + b"\r\nContent-Length: 2\r\n\r\nok")


@pytest.mark.parametrize(
    ("status", "proxy_protocol", "exit_status"),
    [
        (b"HTTP/1.1 200 OK", False, 0),
        (b"HTTP/1.1 200 OK", True, 0),
        (b"HTTP/1.1 503 Service Unavailable", False, 1),
    ],
)
def test_healthcheck_on_loopback(
    status: bytes, proxy_protocol: bool, exit_status: int, capsys: pytest.CaptureFixture[str]
) -> None:
    hc = healthcheck()
    server = _Answering(status)
    args = [f"127.0.0.1:{server.port}"] + (["--proxy-protocol"] if proxy_protocol else [])
    assert hc.main(args) == exit_status
    (request,) = server.received
    assert request.startswith(hc.PROXY_V2_LOCAL) == proxy_protocol
    assert b"GET /healthz HTTP/1.1\r\n" in request
    assert capsys.readouterr().out.startswith("healthy" if exit_status == 0 else "unhealthy")
    server.sock.close()


def test_healthcheck_when_nothing_listens(capsys: pytest.CaptureFixture[str]) -> None:
    assert healthcheck().main([f"127.0.0.1:{free_port()}"]) == 1
    assert capsys.readouterr().out.startswith("unhealthy: ")


# -- ECS Fargate -------------------------------------------------------------------------------


def botocore(module: str) -> Any:
    """A botocore module (a test extra): without it, the test that needs it is skipped."""
    return pytest.importorskip(f"botocore.{module}")


#: each file and the API call it is the input of
ECS_CALLS = {
    "task-definition.json": ("ecs", "RegisterTaskDefinition"),
    "service.json": ("ecs", "CreateService"),
    "target-group.json": ("elbv2", "CreateTargetGroup"),
    "target-group-attributes.json": ("elbv2", "ModifyTargetGroupAttributes"),
}


def ecs(name: str) -> dict[str, Any]:
    return json.loads((ECS / name).read_text())


@functools.cache
def input_shape(service: str, operation: str) -> Any:
    model = botocore("session").get_session().get_service_model(service)
    return model.operation_model(operation).input_shape


def enum_errors(value: Any, shape: Any, where: str = "") -> list[str]:
    """Values outside their shape's enum (``ParamValidator`` does not check enums)."""
    kind = shape.type_name
    if kind == "structure" and isinstance(value, dict):
        return [
            e
            for k, v in value.items()
            if k in shape.members
            for e in enum_errors(v, shape.members[k], f"{where}.{k}")
        ]
    if kind == "list" and isinstance(value, list):
        return [
            e for i, v in enumerate(value) for e in enum_errors(v, shape.member, f"{where}[{i}]")
        ]
    if kind == "map" and isinstance(value, dict):
        return [e for k, v in value.items() for e in enum_errors(v, shape.value, f"{where}[{k}]")]
    if kind == "string" and shape.enum and value not in shape.enum:
        return [f"{where}: {value!r} is not one of {shape.enum}"]
    return []


def api_errors(name: str, params: dict[str, Any]) -> str:
    shape = input_shape(*ECS_CALLS[name])
    report = botocore("validate").ParamValidator().validate(params, shape).generate_report()
    return "\n".join(filter(None, [report, *enum_errors(params, shape)]))


@pytest.mark.parametrize("name", sorted(ECS_CALLS))
def test_ecs_files_are_valid_api_input(name: str) -> None:
    assert api_errors(name, ecs(name)) == ""


@pytest.mark.parametrize(
    ("name", "path", "bad"),
    [
        ("task-definition.json", ("containerDefinitions", 0, "stopTimeout"), "40"),
        ("task-definition.json", ("networkMode",), "awsvpc-ish"),
        ("service.json", ("launchType",), "LAMBDA"),
        ("target-group.json", ("Port",), "3128"),
        ("target-group-attributes.json", ("Attributes", 0, "Value"), True),
    ],
)
def test_ecs_validation_can_fail(name: str, path: tuple[Any, ...], bad: Any) -> None:
    params = copy.deepcopy(ecs(name))
    node = params
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = bad
    assert api_errors(name, params) != ""
    required = input_shape(*ECS_CALLS[name]).required_members[0]
    del params[required]
    assert f'Missing required parameter in input: "{required}"' in api_errors(name, params)


def test_ecs_task_definition() -> None:
    task = ecs("task-definition.json")
    assert task["requiresCompatibilities"] == ["FARGATE"] and task["networkMode"] == "awsvpc"
    (container,) = task["containerDefinitions"]
    assert container["user"] == f"{UID}:{UID}"
    assert container["readonlyRootFilesystem"] is True
    volumes = {v["name"] for v in task["volumes"]}
    assert {m["sourceVolume"] for m in container["mountPoints"]} <= volumes
    assert "/tmp" in {m["containerPath"] for m in container["mountPoints"]}
    # stopTimeout: time after SIGTERM before SIGKILL; Fargate allows at most 120 s
    drain = max(_drain(), _drain(CONTAINER_CONFIG.read_text()))
    assert drain + MARGIN <= container["stopTimeout"] <= 120
    assert container["logConfiguration"]["logDriver"] == "awslogs"
    # the NLB sends PROXY protocol v2: fwproxy listens with haproxy:, and so must the check
    command = container["command"]
    listen = command[command.index("--listen") + 1]
    assert listen.startswith("haproxy:tcp:") and validate_endpoint(listen) is None
    assert command[command.index("--config") + 1] == "/etc/fwproxy/fwproxy.toml"
    check = container["healthCheck"]["command"]
    assert check[0] == "CMD" and "/opt/fwproxy/healthcheck.py" in check
    assert "--proxy-protocol" in check and check[-1] == f"127.0.0.1:{listen.split(':')[2]}"
    ports = [p["containerPort"] for p in container["portMappings"]]
    assert int(listen.split(":")[2]) in ports


def test_ecs_service_and_target_group_agree() -> None:
    task, service = ecs("task-definition.json"), ecs("service.json")
    group, attributes = ecs("target-group.json"), ecs("target-group-attributes.json")
    (container,) = task["containerDefinitions"]
    (lb,) = service["loadBalancers"]
    assert lb["containerName"] == container["name"]
    assert lb["containerPort"] in [p["containerPort"] for p in container["portMappings"]]
    assert lb["targetGroupArn"] == attributes["TargetGroupArn"]
    assert service["taskDefinition"] == task["family"] and service["launchType"] == "FARGATE"
    assert group["Protocol"] == "TCP" and group["Port"] == lb["containerPort"]
    assert group["TargetType"] == "ip"  # awsvpc tasks are registered by IP address
    assert (group["HealthCheckProtocol"], group["HealthCheckPath"]) == ("HTTP", "/healthz")
    assert group["HealthCheckPort"] == "traffic-port"
    attrs = {a["Key"]: a["Value"] for a in attributes["Attributes"]}
    assert attrs["proxy_protocol_v2.enabled"] == "true"
    assert attrs["deregistration_delay.connection_termination.enabled"] == "false"


# -- Kubernetes --------------------------------------------------------------------------------


def kubernetes_validate() -> Any:
    """kubernetes-validate (a test extra): without it, the test that needs it is skipped."""
    return pytest.importorskip("kubernetes_validate")


def manifests() -> dict[str, dict[str, Any]]:
    """Every object in deploy/kubernetes, by kind."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in pytest.importorskip("yaml").safe_load_all(path.read_text()):
            assert doc["kind"] not in found, f"two {doc['kind']} objects"
            found[doc["kind"]] = doc
    return found


KINDS = [
    "ConfigMap",
    "Deployment",
    "HorizontalPodAutoscaler",
    "NetworkPolicy",
    "PodDisruptionBudget",
    "Service",
]


def test_kubernetes_has_every_object() -> None:
    assert sorted(manifests()) == KINDS


@pytest.mark.parametrize("version", [K8S_VERSION, K8S_NEWEST])
@pytest.mark.parametrize("kind", KINDS)
def test_kubernetes_manifests_validate(kind: str, version: str) -> None:
    kubernetes_validate().validate(manifests()[kind], version, strict=True)


def test_kubernetes_validation_can_fail() -> None:
    deployment = copy.deepcopy(manifests()["Deployment"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"][
        "pathh"
    ] = "/readyz"
    with pytest.raises(kubernetes_validate().ValidationError):
        kubernetes_validate().validate(deployment, K8S_VERSION, strict=True)


def configmap_config() -> str:
    return manifests()["ConfigMap"]["data"]["fwproxy.toml"]


def configmap_loaded() -> Config:
    """The ConfigMap's file, loaded by fwproxy. Its ``[admin]`` section (issue 10 item 5:
    probes and metrics on a port of their own) is left out while fwproxy does not know it
    yet (its endpoints are checked by :func:`test_configmap_configuration_is_valid`)."""
    text, source = configmap_config(), "deploy/kubernetes/configmap.yaml"
    try:
        return loads(text, source)
    except ConfigError as e:
        if not any(": admin: unknown key" in problem for problem in e.problems):
            raise
    return loads(re.sub(r"(?ms)^\[admin\]\n.*?(?=^\[)", "", text), source)


def test_configmap_configuration_is_valid() -> None:
    admin = tomllib.loads(configmap_config())["admin"]["listen"]
    assert [validate_endpoint(e) for e in admin] == [None] * len(admin)
    config = configmap_loaded()
    assert config.watch_config  # a ConfigMap update is reloaded
    assert [e.split(":")[:2] for e in config.listen] == [["haproxy", "tcp"]]
    assert config.log["access"] == "-"
    assert config.warnings == ()


def _pod() -> dict[str, Any]:
    return manifests()["Deployment"]["spec"]["template"]["spec"]


def _ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def test_deployment_security_and_resources() -> None:
    pod = _pod()
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == UID
    assert pod["automountServiceAccountToken"] is False
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]


def test_deployment_mounts_the_configmap_as_a_directory() -> None:
    pod = _pod()
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_mounts = [m for m in container["volumeMounts"] if "configMap" in volumes[m["name"]]]
    (mount,) = config_mounts
    assert "subPath" not in mount  # a subPath mount is never updated
    assert (
        volumes[mount["name"]]["configMap"]["name"] == manifests()["ConfigMap"]["metadata"]["name"]
    )
    args = container["args"]
    path = args[args.index("--config") + 1]
    assert path == f"{mount['mountPath']}/fwproxy.toml"
    assert "fwproxy.toml" in manifests()["ConfigMap"]["data"]
    scratch = [m for m in container["volumeMounts"] if "emptyDir" in volumes[m["name"]]]
    assert [m["mountPath"] for m in scratch] == ["/tmp"]


def test_deployment_probes_and_grace_fit_the_drain() -> None:
    pod = _pod()
    (container,) = pod["containers"]
    ports = _ports(container)
    admin = tomllib.loads(configmap_config())["admin"]["listen"]
    assert [int(e.split(":")[1]) for e in admin] == [ports["admin"]]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    config = configmap_loaded()
    assert int(config.listen[0].split(":")[2]) == ports["proxy"]
    # the kubelet runs preStop, then sends SIGTERM; the grace period counts from preStop
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop + config.timeouts.drain + MARGIN <= pod["terminationGracePeriodSeconds"]


def test_service_is_an_nlb_with_proxy_protocol() -> None:
    objects = manifests()
    service = objects["Service"]
    notes = service["metadata"]["annotations"]
    prefix = "service.beta.kubernetes.io/aws-load-balancer-"
    assert notes[prefix + "proxy-protocol"] == "*"
    assert notes[prefix + "nlb-target-type"] == "ip"
    assert notes[prefix + "healthcheck-path"] == "/healthz"
    assert notes[prefix + "healthcheck-port"] == "traffic-port"
    (port,) = service["spec"]["ports"]
    (container,) = _pod()["containers"]
    assert port["targetPort"] in _ports(container)


def test_selectors_match_the_pods() -> None:
    objects = manifests()
    labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]

    def matches(selector: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in selector.items())

    assert matches(objects["Deployment"]["spec"]["selector"]["matchLabels"])
    assert matches(objects["Service"]["spec"]["selector"])
    assert matches(objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"])
    assert matches(objects["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"])
    target = objects["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (
        "Deployment",
        objects["Deployment"]["metadata"]["name"],
    )
    assert objects["HorizontalPodAutoscaler"]["spec"]["minReplicas"] >= 2


def test_network_policy() -> None:
    policy = manifests()["NetworkPolicy"]["spec"]
    (container,) = _pod()["containers"]
    names = set(_ports(container))
    assert {p["port"] for rule in policy["ingress"] for p in rule["ports"]} == names
    blocked = {e for rule in policy["egress"] for to in rule["to"] for e in to["ipBlock"]["except"]}
    assert "169.254.0.0/16" in blocked  # the instance metadata service


# -- systemd -----------------------------------------------------------------------------------


def unit(name: str) -> dict[str, dict[str, str]]:
    """``[Section] Key=Value`` of a unit file (last value wins)."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in (REPO / "etc" / name).read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            current[key.strip()] = value.strip()
    return sections


def exec_start() -> list[str]:
    return shlex.split(unit("fwproxy.service")["Service"]["ExecStart"])


def test_units_fit_the_drain() -> None:
    service = unit("fwproxy.service")["Service"]
    assert service["KillSignal"] == "SIGTERM"
    assert float(service["TimeoutStopSec"]) >= _drain() + MARGIN
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    argv = exec_start()
    listen = argv[argv.index("--listen") + 1]
    assert listen.startswith("systemd:") and "index=0" in listen.split(":")
    socket_unit = unit("fwproxy.socket")["Socket"]
    assert socket_unit["ListenStream"].endswith(":3128")


@pytest.fixture
def units(tmp_path: Path) -> Path:
    """The two units in a directory, ExecStart's program made the fwproxy of this Python
    (``systemd-analyze verify`` checks that it is executable; /opt/fwproxy is not here)."""
    program = exec_start()[0]
    here = Path(sys.executable).with_name("fwproxy")
    if not os.access(here, os.X_OK):
        here = tmp_path / "fwproxy"
        here.write_text("#!/bin/sh\n")
        here.chmod(0o755)
    for name in ("fwproxy.service", "fwproxy.socket"):
        text = (REPO / "etc" / name).read_text()
        (tmp_path / name).write_text(text.replace(f"ExecStart={program} ", f"ExecStart={here} "))
    return tmp_path


def test_systemd_analyze_verify(units: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd; scripts/test does)")
    done = subprocess.run(
        [analyze, "verify", "fwproxy.service", "fwproxy.socket"],
        cwd=units,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # unknown keys and bad values are warnings with exit status 0: any output is a failure
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_systemd_analyze_verify_can_fail(units: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd; scripts/test does)")
    with open(units / "fwproxy.socket", "a") as f:
        f.write("[Socket]\nListenStreem=3129\n")
    done = subprocess.run(
        [analyze, "verify", "fwproxy.socket"], cwd=units, capture_output=True, text=True
    )
    assert "ListenStreem" in done.stdout + done.stderr


#: a process given a socket as systemd gives it (fd 3, LISTEN_FDS, LISTEN_PID) checks the
#: endpoint that names it, then says whether fd 3 is still that socket
CHECK_INHERITED = """
import os, socket, sys
s = socket.create_server(("127.0.0.1", 0))
os.dup2(s.fileno(), 3)
os.environ.update(LISTEN_FDS="1", LISTEN_FDNAMES="proxy", LISTEN_PID=str(os.getpid()))
from fwproxy.config import validate_endpoint
print(validate_endpoint(sys.argv[1]))
try:
    print(socket.socket(fileno=os.dup(3)).getsockname() == s.getsockname())
except OSError:
    print(False)
"""


@pytest.mark.parametrize(
    ("description", "problem"),
    [
        ("systemd:domain=INET:index=0", "None"),
        ("systemd:domain=INET:index=1", "no such socket was passed by systemd"),
    ],
)
def test_validating_a_systemd_listener_keeps_its_socket(description: str, problem: str) -> None:
    """Checking ``systemd:domain=INET:index=0`` (at start-up and on every SIGHUP) must not
    listen on the inherited socket, even on a fake reactor: that would close it."""
    done = subprocess.run(
        [sys.executable, "-c", CHECK_INHERITED, description],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    said, still_open = done.stdout.splitlines()
    assert said.startswith(problem) and still_open == "True", done.stdout


@pytest.fixture
def origin() -> Iterator[OriginServer]:
    with running(OriginServer("127.0.0.1")) as server:
        yield server


def test_socket_activation_runs_the_units_command(tmp_path: Path, origin: OriginServer) -> None:
    """fwproxy.service's ExecStart arguments, on a socket passed as systemd passes it
    (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES): started by the first connection, which it then
    serves; relays; reloads on SIGHUP; drains and exits 0 on SIGTERM."""
    activate = shutil.which("systemd-socket-activate")
    if activate is None:
        pytest.skip("systemd-socket-activate is not installed (apt-get install systemd)")
    config = tmp_path / "fwproxy.toml"
    config.write_text(
        '[proxy]\nlisten = ["tcp:1"]\n\n[acl.local]\nsrc = ["127.0.0.0/8"]\n\n'
        '[access]\nrules = ["deny to_linklocal", "allow local", "deny all"]\n'
    )
    args = exec_start()[1:]
    args[args.index("--config") + 1] = str(config)
    port = free_port()
    fdname = unit("fwproxy.socket")["Socket"]["FileDescriptorName"]
    out_path = tmp_path / "out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [activate, "-l", f"127.0.0.1:{port}", f"--fdname={fdname}"]
            + [sys.executable, "-m", "fwproxy.cli", *args],
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: port_accepts("127.0.0.1", port), 10, "the socket")
        # the first connection starts the proxy (systemd-socket-activate execs it: same pid)
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.sendall(f"GET {origin.url}/bytes/5 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
        output = out_path.read_text
        wait_until(lambda: "fwproxy listening on 127.0.0.1:" in output(), 10, "listening")
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in output(), 10, "the reload")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(_drain() + MARGIN) == 0, output()
        assert "Traceback" not in output()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
