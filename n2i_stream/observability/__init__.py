"""Operations: structured logs, Prometheus metrics and a health check.

:func:`setup_logging` needs nothing beyond the standard library; the metrics exporter needs the
``metrics`` extra (``prometheus-client``), so import it from
:mod:`n2i_stream.observability.metrics` where it is wanted.
"""

from .logs import JsonFormatter, TextFormatter, setup_logging

__all__ = ["JsonFormatter", "TextFormatter", "setup_logging"]
