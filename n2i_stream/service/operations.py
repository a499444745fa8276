"""Everything the settings file asks of a running service besides its sockets and pipeline:
logging, metrics and health, CURVE, the scan journal and resuming, the model registry.

The entry point (``n2i-stream serve --config FILE``) does, in this order::

    settings = load_settings(path, overrides=...)
    ops = Operations(settings)                      # logging set up; nothing bound yet
    ctx = zmq.Context()
    source = ZmqFrameSource(settings.data, context=ops.context("data", ctx))
    service = N2IService(source, options=settings.pipeline_options(), journal=ops.journal)
    service.add_sink(ZmqResultSink(settings.results, context=ops.context("results", ctx)))
    ops.attach(service)                             # metrics sink and listeners: before start
    service.start()
    control = ControlServer(settings.control.endpoint, ControlHandler(service, ...),
                            context=ops.context("control", ctx))
    control.start()
    ops.start()                                     # the metrics port
    ops.resume(service)                             # the scan a crash interrupted, if any
    ... wait for SIGTERM / shutdown ...
    service.close(); control.close(); ops.close(); ctx.term()

Sockets whose ``curve`` is set are made from a CURVE server context (:mod:`n2i_stream.io.curve`);
the others from the caller's context.
"""

from __future__ import annotations

import logging
from typing import Any

import zmq

from ..errors import ConfigError, ServiceError
from ..settings import ServiceSettings, settings_warnings
from .resume import (
    ResumePlan,
    ScanJournal,
    register_resumed_model,
    register_trained_models,
    resume_unfinished,
)

__all__ = ["Operations"]

log = logging.getLogger(__name__)


class Operations:
    """Builds the operational parts ``settings`` ask for (see the module docstring).

    ``logging_setup=False`` leaves the process's logging alone (tests, embedding programs).
    """

    def __init__(self, settings: ServiceSettings, *, logging_setup: bool = True) -> None:
        self.settings = settings
        if logging_setup:
            from ..observability import setup_logging

            s = settings.logging
            setup_logging(s.level, s.format, s.file)
        for warning in settings_warnings(settings):
            log.warning("settings %s: %s", settings.source, warning)
        self.journal = ScanJournal(settings.state.directory) if settings.state.directory else None
        self.registry: Any = None
        if settings.registry.directory is not None:
            from ..learn.registry import ModelRegistry

            self.registry = ModelRegistry(settings.registry.directory)
        self.exporter: Any = None
        self._curve: Any = None
        if settings.curve_sockets:
            from ..io.curve import CurveServer

            secret = settings.security.server_secret_key
            if secret is None:
                raise ConfigError("[security] server_secret_key: required for CURVE sockets")
            self._curve = CurveServer(secret, authorized_keys=settings.security.authorized_keys)

    def context(self, socket: str, default: zmq.Context) -> zmq.Context:
        """The context to make ``socket`` (``data``, ``control``, ``results``) from."""
        if socket not in ("data", "control", "results"):
            raise ConfigError(f"unknown socket {socket!r}; expected data, control or results")
        if socket in self.settings.curve_sockets:
            return self._curve.context
        return default

    def attach(self, service: Any) -> None:
        """Connect the metrics sink and the registry to ``service`` (before it starts)."""
        if self.settings.metrics.enabled:
            try:
                from ..observability.metrics import MetricsExporter
            except ImportError as exc:
                raise ConfigError(
                    "[metrics] enabled needs prometheus-client: pip install 'n2i-stream[metrics]'"
                ) from exc
            self.exporter = MetricsExporter.from_settings(self.settings.metrics, service.status)
            self.exporter.attach(service)
        if self.registry is not None and self.settings.registry.register:
            register_trained_models(
                service, self.registry, detector=self.settings.registry.detector
            )

    def start(self) -> None:
        """Serve the metrics port (ServiceError if it cannot be bound)."""
        if self.exporter is not None:
            self.exporter.start()
            log.info("metrics and health on %s", self.exporter.url)

    def resume(self, service: Any) -> ResumePlan | None:
        """Configure the scan a crash left unfinished, if any and if ``[state] resume``."""
        if self.journal is None or not self.settings.state.resume:
            return None
        plan = resume_unfinished(self.journal)
        if plan is None:
            return None
        try:
            service.configure(plan.scan, resume=plan)
        except Exception as exc:
            self.journal.finish(plan.record, f"not resumed: {exc}")
            log.error("scan %s could not be resumed: %s", plan.scan.scan_id, exc)
            return None
        if self.registry is not None and self.settings.registry.register:
            register_resumed_model(plan, self.registry, detector=self.settings.registry.detector)
        return plan

    def close(self) -> None:
        """Stop the metrics port and the CURVE handler (after the sockets are closed)."""
        if self.exporter is not None:
            self.exporter.close()
        if self._curve is not None:
            try:
                self._curve.close()
            except zmq.ZMQError as exc:
                raise ServiceError(f"closing the CURVE context failed: {exc}") from exc
