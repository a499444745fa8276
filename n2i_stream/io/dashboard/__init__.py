"""The control-room dashboard: a live, read-only web page served by the service.

Wiring (the service does this for ``n2i-stream serve --dashboard HOST:PORT``)::

    sink = DashboardSink()
    service.add_sink(sink)
    server = DashboardServer(service.status, sink, DashboardConfig(host=host, port=port))
    server.start()
    print(f"dashboard: {server.url}")
    ...
    server.close()
"""

from .events import EventHub
from .server import DashboardConfig, DashboardServer, parse_address
from .sink import KINDS, DashboardSink, HeldResult, NotHeld

__all__ = [
    "KINDS",
    "DashboardConfig",
    "DashboardServer",
    "DashboardSink",
    "EventHub",
    "HeldResult",
    "NotHeld",
    "parse_address",
]
