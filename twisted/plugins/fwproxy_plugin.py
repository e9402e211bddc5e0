"""twistd dropin: ``twistd -n fwproxy``. The real code is in :mod:`fwproxy.tap`."""

from twisted.application.service import ServiceMaker

fwproxy = ServiceMaker("fwproxy", "fwproxy.tap", "A forward (egress) HTTP proxy", "fwproxy")
