"""An example third-party fwproxy filter: tags requests and counts responses by status."""

from collections import Counter

from zope.interface import implementer, provider

from fwproxy.interfaces import IFilterFactory, IRequestFilter, IResponseFilter
from fwproxy.message import Request, Response


@implementer(IRequestFilter, IResponseFilter)
class Tagger:
    """Adds ``X-Acme-Tag: TAG`` to every relayed request; answers 403 for blocked paths."""

    def __init__(self, tag: str, blocked_prefixes: tuple[str, ...]) -> None:
        self.tag = tag.encode()
        self.blocked = tuple(p.encode() for p in blocked_prefixes)
        self.statuses: Counter[int] = Counter()

    def requestReceived(self, request: Request) -> Response | None:
        if request.path.startswith(self.blocked):
            return Response.text(403, "blocked by acme.tagger", result_code="TCP_DENIED")
        request.headers.set("X-Acme-Tag", self.tag)
        return None

    def responseReceived(self, request: Request, response: Response) -> None:
        self.statuses[response.status] += 1
        return None


@provider(IFilterFactory)
class TaggerFactory:
    name = "acme.tagger"

    @staticmethod
    def build(options, context):
        unknown = set(options) - {"tag", "blocked_prefixes"}
        if unknown:
            raise ValueError(f"unknown option(s): {', '.join(sorted(unknown))}")
        tag = options.get("tag", "acme")
        if not isinstance(tag, str) or not tag.isalnum():
            raise ValueError(f"tag: {tag!r} must be letters and digits")
        prefixes = options.get("blocked_prefixes", [])
        if not isinstance(prefixes, list) or not all(isinstance(p, str) for p in prefixes):
            raise ValueError("blocked_prefixes: expected a list of path prefixes")
        return Tagger(tag, tuple(prefixes))
