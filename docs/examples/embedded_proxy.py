"""Embedding fwproxy in a Twisted program: a ProxyFactory on an endpoint of your choosing.

    python docs/examples/embedded_proxy.py 8128

serves 127.0.0.1:8128 for loopback clients until interrupted. See docs/embedding.md.
"""

import sys

from twisted.internet import defer, endpoints, task

from fwproxy import ProxyFactory, loads_config

CONFIG = """
[acl.local]
src = ["127.0.0.0/8", "::1/128"]
[access]
rules = ["deny to_linklocal", "allow local", "deny all"]
[log]
access = "-"
format = "json"
"""


async def main(reactor, port: str = "8128") -> None:
    config = loads_config(CONFIG, source="embedded_proxy.py")
    factory = ProxyFactory(config, reactor)
    endpoint = endpoints.serverFromString(reactor, f"tcp:{port}:interface=127.0.0.1")
    listening = await endpoint.listen(factory)
    print(f"proxy on {listening.getHost().host}:{listening.getHost().port}", flush=True)
    await defer.Deferred()  # serve until the process is stopped


if __name__ == "__main__":
    task.react(lambda reactor, *args: defer.ensureDeferred(main(reactor, *args)), sys.argv[1:])
