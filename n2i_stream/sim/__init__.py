"""Simulated beamline: analytic phantoms and a dynamic-scan simulator (part of the package)."""

from .analytic import Disk, disk_chords, disks_image, disks_sinogram
from .phantom import FoamPhantom, Sphere, make_foam
from .scan import DynamicScan, ScanArrays, SimConfig, SimFrame

__all__ = [
    "Disk",
    "DynamicScan",
    "FoamPhantom",
    "ScanArrays",
    "SimConfig",
    "SimFrame",
    "Sphere",
    "disk_chords",
    "disks_image",
    "disks_sinogram",
    "make_foam",
]
