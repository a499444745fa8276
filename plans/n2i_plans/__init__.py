"""Bluesky plans and ophyd-async devices that drive the n2i-stream service.

* :class:`N2IStream` — the service (its control socket) as a Preparable, Flyable device with
  readable, subscribable status signals; ``n2i.training`` waits for training.
* :class:`SimRotationStage`, :class:`SimTomoCamera` — simulated continuous rotation and a camera
  streaming the simulated dynamic phantom over ZMQ.
* :func:`dynamic_tomo_scan`, :func:`static_tomo_scan` — the plans.
"""

from .client import ControlClient, ServiceBusyError, ServiceUnreachableError
from .device import N2IStream, N2ITraining
from .plans import dynamic_tomo_scan, scan_table, static_tomo_scan
from .schedule import RotationSchedule, interlaced_speed
from .sim_devices import CameraAcquisition, RotationFly, SimRotationStage, SimTomoCamera

__all__ = [
    "CameraAcquisition",
    "ControlClient",
    "N2IStream",
    "N2ITraining",
    "RotationFly",
    "RotationSchedule",
    "ServiceBusyError",
    "ServiceUnreachableError",
    "SimRotationStage",
    "SimTomoCamera",
    "dynamic_tomo_scan",
    "interlaced_speed",
    "scan_table",
    "static_tomo_scan",
]
