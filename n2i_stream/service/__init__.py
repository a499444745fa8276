"""The live service: owns sockets, workers, lifecycle and the scan state machine.

Modules, from the outside in:

* :mod:`~n2i_stream.service.control` — the control protocol (its docstring is the reference),
  the ROUTER server and a client;
* :mod:`~n2i_stream.service.service` — :class:`N2IService`: one frame source, one scan at a
  time, the ingest thread, ``status()``;
* :mod:`~n2i_stream.service.scan_config` — :class:`ScanConfig`, what ``configure`` takes;
* :mod:`~n2i_stream.service.pipeline` — one scan's workers and queues (:class:`PipelineOptions`);
* :mod:`~n2i_stream.service.assembly` / :mod:`~n2i_stream.service.timestep` — frames into steps;
* :mod:`~n2i_stream.service.steps` — a step's FBP with the offline path's numerics;
* :mod:`~n2i_stream.service.training` — Noise2Inverse training in the background;
* :mod:`~n2i_stream.service.queues`, :mod:`~n2i_stream.service.state` — bounded hand-offs with
  an overload policy, named states and transitions;
* :mod:`~n2i_stream.service.sinks` — :class:`StepResult`, the :class:`ResultSink` protocol and
  the in-memory, queued and HDF5 sinks (the PUB sink is :mod:`n2i_stream.io.zmq_sink`);
* :mod:`~n2i_stream.service.loopback` — the whole service on loopback (demo, benchmark, tests);
* :mod:`~n2i_stream.service.runtime` — process settings the entry points apply first.
"""

from .control import ControlClient, ControlHandler, ControlServer
from .pipeline import PipelineOptions
from .scan_config import ScanConfig, TrainingOptions
from .service import N2IService
from .sinks import MemorySink, QueuedSink, ResultsFileSink, ResultSink, StepResult
from .state import STATES, TRAINING_STATES

__all__ = [
    "STATES",
    "TRAINING_STATES",
    "ControlClient",
    "ControlHandler",
    "ControlServer",
    "MemorySink",
    "N2IService",
    "PipelineOptions",
    "QueuedSink",
    "ResultSink",
    "ResultsFileSink",
    "ScanConfig",
    "StepResult",
    "TrainingOptions",
]
