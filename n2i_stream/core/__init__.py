"""Pure array core: geometry, preprocessing, FBP, centre finding, splits, metrics and baselines.

Everything here takes arrays and parameters and returns arrays: no sockets, files, threads or
torch. It is written once against the array API (NumPy and CuPy share it); compiled kernels
(numba, CuPy raw kernels) sit behind the same functions and are tested against it.
"""

from .center import CenterEstimate, find_center
from .denoise import gaussian_filter, tv_denoise
from .fbp import backproject, backproject_reference, fbp
from .filters import FILTERS, filter_projections, ramp_filter
from .geometry import ParallelGeometry, angular_weights
from .metrics import field_of_view, psnr, ssim
from .phase import paganin, paganin_line_integrals
from .preprocess import line_integrals
from .project import forward_project
from .timesteps import assign_time_steps, choose_steps_to_combine, interlace_report
from .tvmin import tv_min

__all__ = [
    "FILTERS",
    "CenterEstimate",
    "ParallelGeometry",
    "angular_weights",
    "assign_time_steps",
    "backproject",
    "backproject_reference",
    "choose_steps_to_combine",
    "fbp",
    "field_of_view",
    "filter_projections",
    "find_center",
    "forward_project",
    "gaussian_filter",
    "interlace_report",
    "line_integrals",
    "paganin",
    "paganin_line_integrals",
    "psnr",
    "ramp_filter",
    "ssim",
    "tv_denoise",
    "tv_min",
]
