"""A response body filter: cap what a client may download (see docs/filters.md, "Body filters").

A response that announces more than ``max_bytes`` (Content-Length) is refused with a 502 page
before any byte of it reaches the client; one of unknown length (chunked, close-delimited) is
streamed until it goes over, and then the client connection is cut (the body filter answers
with a Response after bytes were sent, which the proxy cannot honour). Configure it by dotted
path, with this directory on PYTHONPATH::

    [[filters]]
    name = "body_cap.BodyCapFactory"
    options = { max_bytes = 10_000_000 }
"""

from zope.interface import implementer, provider

from fwproxy.interfaces import IBodyTransform, IFilterFactory, IResponseBodyFilter
from fwproxy.message import Response


@implementer(IBodyTransform)
class Cap:
    """One response body, counted. Passes every chunk on as it is: keeps the length."""

    keeps_length = True

    def __init__(self, limit, announced):
        self.left = limit
        self.announced = announced

    def data(self, chunk):
        if self.announced is not None and self.announced > self.left:
            # the head is still held back: the client gets this page instead
            return Response.text(502, f"fwproxy: response over {self.left} bytes refused")
        self.left -= len(chunk)
        if self.left < 0:
            return Response.text(502, "fwproxy: response too large")  # too late: cut
        return chunk

    def end(self):
        return b""


@implementer(IResponseBodyFilter)
class BodyCap:
    def __init__(self, limit):
        self.limit = limit

    def responseBody(self, request, response):
        length = response.headers.get(b"content-length")
        return Cap(self.limit, int(length) if length is not None else None)


@provider(IFilterFactory)
class BodyCapFactory:
    name = "body_cap"

    @staticmethod
    def build(options, context):
        limit = options.get("max_bytes")
        if type(limit) is not int or limit < 0:
            raise ValueError(f"max_bytes: {limit!r} must be a whole number of bytes")
        return BodyCap(limit)
