"""Offline reconstruction of Data Exchange scans into a results file (library code).

:func:`reconstruct_file` runs one :class:`ReconstructConfig`; :class:`ScanSteps` turns an open
scan into corrected line integrals and a geometry per time step; :func:`fbp_step` makes one
step's volume and :func:`resolve_center` fixes the rotation centre. ``n2i-stream reconstruct``
is the command line over these; the live service reuses :class:`ScanSteps`' conventions.

Method ``"n2i"`` (settings in :class:`N2IConfig`) also writes ``/reconstruction/denoised``: it
trains a Noise2Inverse denoiser first (dynamic strategy: on the first K selected time steps;
static: on the first selected step's angles split into J sections) or loads one (``model``),
then FBP-reconstructs and denoises every selected step. A run that fails before the results
file exists — bad settings, a model that does not fit, training that diverges — writes no
file at all, so a denoised dataset is never there without a valid model behind it. Denoising
that turns non-finite (a broken model) stops the run: the file keeps the steps done, the
failing step has its FBP and an unwritten (NaN) denoised slot, and the error says so.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .core.filters import FILTERS
from .core.preprocess import MIN_TRANSMISSION
from .errors import ConfigError, DataFileError, ModelError, TrainingError

if TYPE_CHECKING:
    import numpy as np

    from .core.geometry import ParallelGeometry
    from .core.timesteps import TimeSteps
    from .io.dxchange import DataExchangeFile
    from .learn import Denoiser, Progress, TrainConfig

__all__ = [
    "METHODS",
    "N2IConfig",
    "Range",
    "ReconstructConfig",
    "ReconstructResult",
    "ScanSteps",
    "fbp_step",
    "reconstruct_file",
    "resolve_center",
    "training_steps",
]

METHODS: tuple[str, ...] = ("fbp", "n2i")
#: datasets under /reconstruction that each method writes
_KINDS: dict[str, tuple[str, ...]] = {"fbp": ("fbp",), "n2i": ("fbp", "denoised")}
#: Noise2Inverse strategies for a scan file (XRD-CT has its own input layout)
STRATEGIES: tuple[str, ...] = ("dynamic", "static")
#: the networks of :data:`n2i_stream.learn.NETWORKS`, named here so that parsing options
#: does not load torch
NETWORKS: tuple[str, ...] = ("unet", "dncnn", "msd")
#: N2IConfig fields that only shape training: refused next to ``model``
_TRAINING_ONLY = (
    "train_steps", "dynamics_start", "sections", "save_model", "depth", "width", "crop", "batch",
    "lr", "iterations", "minutes", "seed",
)  # fmt: skip
#: N2IConfig fields passed on to TrainConfig when set
_TRAIN_KNOBS = (
    "network", "depth", "width", "context", "crop", "batch", "lr", "iterations", "minutes",
    "seed", "threads", "device",
)  # fmt: skip

#: a Python-slice-like selection ``a:b`` (None = open end, negative counts from the end)
Range = tuple[int | None, int | None]
log = logging.getLogger(__name__)


def _option(field: str) -> str:
    """The command-line option of an :class:`N2IConfig` field (errors name what users type)."""
    return "--" + field.replace("_", "-")


@dataclass(frozen=True)
class N2IConfig:
    """How method ``"n2i"`` gets its denoiser and where it trains.

    Dynamic strategy: train on the first ``train_steps`` (K >= 2) selected time steps, which
    must all come before ``dynamics_start`` (the first step in which the sample changes) and
    leave at least one selected step after them. Static strategy (one static scan): train on
    the first selected step, its angles split into ``sections`` interleaved sections. With
    ``model`` nothing is trained: the checkpoint is checked against the scan (and against
    ``network``, ``context`` and ``strategy`` when given) and applied; options that only shape
    training are refused next to it. Training knobs left None take
    :class:`~n2i_stream.learn.TrainConfig`'s defaults; with neither ``iterations`` nor
    ``minutes`` training runs for 5 minutes.
    """

    strategy: Literal["dynamic", "static"] | None = None  # None: dynamic (with model: any)
    train_steps: int | None = None  # K, dynamic strategy: training time steps
    dynamics_start: int | None = None  # first time step in which the sample changes
    sections: int | None = None  # J, static strategy (default 4)
    model: str | None = None  # checkpoint to apply instead of training
    save_model: str | None = None  # write the trained checkpoint here
    network: Literal["unet", "dncnn", "msd"] | None = None  # network to train
    depth: int | None = None  # network depth (None: the network's default)
    width: int | None = None  # network width (None: the network's default)
    context: int | None = None  # 2.5D context slices above and below
    crop: int | None = None  # training crop side, pixels
    batch: int | None = None  # crops per training step
    lr: float | None = None  # Adam learning rate
    iterations: int | None = None  # training steps, at most
    minutes: float | None = None  # training time, at most
    seed: int | None = None  # seed of initialisation and crop sampling
    threads: int | None = None  # torch CPU threads for training (0: every core)
    device: Literal["auto", "cpu", "cuda"] | None = None  # where to train and denoise
    #: take the FBP's spatial scales coarser than a Gaussian of this many pixels (None: off)
    keep_low: float | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.strategy is not None and self.strategy not in STRATEGIES:
            problems.append(f"--strategy {self.strategy!r} is not one of {list(STRATEGIES)}")
        if self.network is not None and self.network not in NETWORKS:
            problems.append(f"--network {self.network!r} is not one of {list(NETWORKS)}")
        if self.model is not None:
            extra = [_option(name) for name in _TRAINING_ONLY if getattr(self, name) is not None]
            if extra:
                verb = "applies" if len(extra) == 1 else "apply"
                problems.append(
                    f"{', '.join(extra)} only {verb} to training, but --model reuses a trained "
                    "model; drop them, or drop --model to train a new one"
                )
        elif self.strategy == "static":
            if self.train_steps is not None:
                problems.append(
                    "--train-steps is for the dynamic strategy; the static strategy trains on "
                    "the first selected time step, its angles split into --sections"
                )
            if self.sections is not None and self.sections < 2:
                problems.append(f"--sections must be >= 2, got {self.sections}")
        else:
            if self.sections is not None:
                problems.append("--sections is for the static strategy (--strategy static)")
            if self.train_steps is None:
                problems.append(
                    "the dynamic strategy needs --train-steps K (the time steps before the "
                    "sample changes), or --model to reuse a trained model"
                )
            elif self.train_steps < 2:
                problems.append(
                    "dynamic Noise2Inverse needs at least 2 training time steps, got "
                    f"--train-steps {self.train_steps}"
                )
        if self.dynamics_start is not None and self.dynamics_start < 0:
            problems.append(f"--dynamics-start must be >= 0, got {self.dynamics_start}")
        if self.keep_low is not None and not (math.isfinite(self.keep_low) and self.keep_low > 0):
            problems.append(f"--keep-low must be > 0 pixels, got {self.keep_low}")
        if problems:
            raise ConfigError("Noise2Inverse: " + "; ".join(problems))

    @property
    def trains(self) -> bool:
        """Whether a denoiser is trained (no model given)."""
        return self.model is None

    def train_config(self) -> TrainConfig:
        """The :class:`~n2i_stream.learn.TrainConfig` of these settings (loads torch)."""
        from .learn import TrainConfig

        knobs = {k: getattr(self, k) for k in _TRAIN_KNOBS if getattr(self, k) is not None}
        if self.iterations is not None and self.minutes is None:
            knobs["minutes"] = None  # an iteration count alone is the whole stopping rule
        # One loss value per iteration: /training/loss keeps the whole curve.
        return TrainConfig(**knobs, report_every=1)


@dataclass(frozen=True)
class ReconstructConfig:
    """One offline reconstruction run.

    ``steps`` and ``rows`` select like Python slices ``a:b`` (None = open end, negative counts
    from the end); ``center_offset`` is in detector pixels or ``"auto"`` (estimated from the
    first selected step). Method ``"n2i"`` needs its settings in ``n2i``.
    """

    input: str  # Data Exchange file to read
    output: str  # results file to write
    method: Literal["fbp", "n2i"] = "fbp"  # reconstruction method
    frames_per_step: int | None = None  # overrides the file's attribute; None: file or 180°
    center_offset: float | Literal["auto"] = 0.0  # rotation-axis offset, px, or "auto"
    filter: str = "ramlak"  # ramp filter window
    oversample: int = 1  # filtered samples per detector column (2: sharper, see core.fbp.fbp)
    steps: Range = (None, None)  # time steps to reconstruct, a:b
    rows: Range = (None, None)  # detector rows (slices) to reconstruct, a:b
    n: int | None = None  # reconstruction size n x n; None: detector columns
    references: Literal["linear", "nearest"] = "linear"  # mid-scan darks/flats per frame
    chunk_frames: int = 64  # frames read and corrected at a time
    min_transmission: float = MIN_TRANSMISSION  # lowest transmission before clipping
    overwrite: bool = False  # replace an existing output file (and model file)
    n2i: N2IConfig | None = None  # Noise2Inverse settings, method "n2i" only

    def __post_init__(self) -> None:
        problems = []
        if self.method not in METHODS:
            problems.append(f"method {self.method!r} is not one of {list(METHODS)}")
        if self.filter not in FILTERS:
            problems.append(f"filter {self.filter!r} is not one of {list(FILTERS)}")
        if self.oversample not in (1, 2, 3, 4):
            problems.append(f"oversample must be 1, 2, 3 or 4, got {self.oversample!r}")
        if self.frames_per_step is not None and self.frames_per_step < 1:
            problems.append(f"frames_per_step must be >= 1, got {self.frames_per_step}")
        if self.n is not None and self.n < 1:
            problems.append(f"n must be >= 1, got {self.n}")
        if self.chunk_frames < 1:
            problems.append(f"chunk_frames must be >= 1, got {self.chunk_frames}")
        if not 0 < self.min_transmission < 1:
            problems.append(f"min_transmission must be in (0, 1), got {self.min_transmission}")
        if isinstance(self.center_offset, str) and self.center_offset != "auto":
            problems.append(f"center_offset must be a number or 'auto', got {self.center_offset!r}")
        if Path(self.input).resolve() == Path(self.output).resolve():
            problems.append("the output file must differ from the input file")
        if self.method == "n2i" and self.n2i is None:
            problems.append("method 'n2i' needs its settings (n2i)")
        if self.method != "n2i" and self.n2i is not None:
            problems.append(f"n2i settings only apply to method 'n2i', not {self.method!r}")
        if problems:
            raise ConfigError("reconstruct: " + "; ".join(problems))


@dataclass(frozen=True)
class ReconstructResult:
    """What a run wrote: the file, the time steps, the centre used and what was clipped."""

    output: Path
    time_steps: tuple[int, ...]
    shape: tuple[int, int, int]  # (rows, n, n) of each step
    center_offset: float
    clipped: int  # transmissions clipped to stay finite, all steps together
    dropped_frames: int  # frames in no complete time step
    seconds: float
    model: dict[str, Any] | None = None  # method "n2i": the denoiser used (see model_info)


def _select(bounds: Range, total: int, what: str) -> range:
    selected = range(total)[slice(*bounds)]
    if len(selected) == 0:
        a, b = ("" if v is None else v for v in bounds)
        raise ConfigError(f"{what} {a}:{b} selects none of the {total} available")
    return selected


class ScanSteps:
    """An open Data Exchange scan seen as time steps of corrected line integrals.

    Steps come from ``config.frames_per_step``, else the file's attribute, else one per 180°.
    Problems with the file's angles are reported as :class:`DataFileError` naming the file.
    """

    def __init__(self, scan: DataExchangeFile, config: ReconstructConfig) -> None:
        from .core.timesteps import assign_time_steps
        from .errors import GeometryError
        from .io.dxchange import DATA, THETA

        self.scan = scan
        self.config = config
        fps = config.frames_per_step or scan.frames_per_step
        try:
            self.steps: TimeSteps = assign_time_steps(scan.theta, frames_per_step=fps)
        except GeometryError as exc:
            dataset = DATA if fps is not None else THETA
            raise DataFileError(scan.path, dataset, str(exc)) from exc
        self.selected = _select(config.steps, len(self.steps), "--steps")
        rows = _select(config.rows, scan.rows, "--rows")
        self.rows = slice(rows.start, rows.stop)
        self.n = config.n or scan.cols

    @property
    def volume_shape(self) -> tuple[int, int, int]:
        """``(rows, n, n)`` of one reconstructed step."""
        return (self.rows.stop - self.rows.start, self.n, self.n)

    def geometry(self, step: int, center_offset: float) -> ParallelGeometry:
        """Geometry of time step ``step`` for the selected rows."""
        from .core.geometry import ParallelGeometry

        return ParallelGeometry.from_degrees(
            self.scan.theta[self.steps.slice(step)],
            rows=self.volume_shape[0],
            cols=self.scan.cols,
            center_offset=center_offset,
        )

    def projections(self, step: int) -> tuple[np.ndarray, int]:
        """Line integrals ``(frames, rows, cols)`` of time step ``step`` and the clipped count."""
        frames = self.steps.frames(step)
        res = self.scan.line_integrals(
            frames.start,
            frames.stop,
            rows=self.rows,
            mode=self.config.references,
            chunk=self.config.chunk_frames,
            min_transmission=self.config.min_transmission,
        )
        return res.data, res.clipped


def fbp_step(
    steps: ScanSteps,
    step: int,
    *,
    center_offset: float,
    window: str = "ramlak",
    oversample: int = 1,
) -> tuple[np.ndarray, int]:
    """FBP volume ``(rows, n, n)`` float32 of one time step, and its clipped-value count."""
    from .core.fbp import fbp

    projections, clipped = steps.projections(step)
    geometry = steps.geometry(step, center_offset)
    volume = fbp(projections, geometry, n=steps.n, window=window, oversample=oversample)
    return volume, clipped


def resolve_center(steps: ScanSteps, config: ReconstructConfig) -> float:
    """The configured centre offset, or the one found on the first selected step (``auto``)."""
    if config.center_offset != "auto":
        return float(config.center_offset)
    from .core.center import find_center

    first = steps.selected[0]
    projections, _ = steps.projections(first)
    return float(find_center(projections, steps.geometry(first, 0.0)).offset)


def training_steps(steps: ScanSteps, n2i: N2IConfig) -> range:
    """The time steps a Noise2Inverse denoiser trains on: the first K selected (dynamic) or the
    first selected (static); :class:`ConfigError` when they overlap the dynamics or leave no
    later step."""
    first, selected = steps.selected[0], steps.selected
    if n2i.strategy == "static":
        chosen = range(first, first + 1)
    else:
        k = int(n2i.train_steps or 0)
        if k >= len(selected):
            fix = (
                f"choose K < {len(selected)}"
                if len(selected) > 2
                else f"select at least {k + 1} time steps (--steps)"
            )
            raise ConfigError(
                f"--train-steps {k} uses every one of the {len(selected)} selected time steps "
                f"({selected.start}..{selected.stop - 1}); the dynamic strategy trains on the "
                f"steps before the sample changes and denoises the later ones: {fix} "
                "(or --strategy static for a single static scan)"
            )
        chosen = range(first, first + k)
    d = n2i.dynamics_start
    if d is not None and chosen.stop > d:
        fix = (
            f"use --train-steps <= {d - first}"
            if d - first >= 2 and n2i.strategy != "static"
            else "select earlier time steps (--steps)"
        )
        raise ConfigError(
            f"training time steps {chosen.start}..{chosen.stop - 1} overlap the dynamics from "
            f"time step {d} (--dynamics-start): training must see only the unchanged sample; " + fix
        )
    return chosen


def model_info(denoiser: Denoiser, *, source: str, saved_to: str | None = None) -> dict[str, Any]:
    """What the results file records of a denoiser: network, size, provenance and training."""
    from .learn import count_parameters

    history = denoiser.loss_history
    return {
        "source": source,
        "saved_to": saved_to,
        "network": denoiser.spec.name,
        "depth": denoiser.spec.depth,
        "width": denoiser.spec.width,
        "parameters": count_parameters(denoiser.network),
        "context": denoiser.context,
        "strategy": denoiser.strategy,
        "geometry": dict(denoiser.geometry),
        "normalisation": [denoiser.normalisation.mean, denoiser.normalisation.std],
        "iterations": denoiser.iteration,
        "training_seconds": round(denoiser.training_seconds, 3),
        "final_loss": history[-1][1] if history else None,
    }


def _load_model(n2i: N2IConfig) -> Denoiser:
    import torch

    from .learn import load_checkpoint

    use_cuda = n2i.device == "cuda" or (n2i.device in (None, "auto") and torch.cuda.is_available())
    return load_checkpoint(str(n2i.model), device="cuda" if use_cuda else "cpu")


def _train(
    steps: ScanSteps,
    config: ReconstructConfig,
    center: float,
    chosen: range,
    train_config: TrainConfig,
    progress: Callable[[Progress], None] | None,
) -> Denoiser:
    from .core.fbp import fbp
    from .learn import train_dynamic, train_static

    n2i = config.n2i
    assert n2i is not None

    def reconstruct(projections: Any, geometry: ParallelGeometry) -> Any:
        # The same filter as the volumes the denoiser will be applied to.
        return fbp(
            projections, geometry, n=steps.n, window=config.filter, oversample=config.oversample
        )

    stacks = [steps.projections(s)[0] for s in chosen]
    geometries = [steps.geometry(s, center) for s in chosen]
    try:
        if n2i.strategy == "static":
            return train_static(
                stacks[0],
                geometries[0],
                train_config,
                sections=n2i.sections or 4,
                n=steps.n,
                reconstruct=reconstruct,
                progress=progress,
            )
        return train_dynamic(
            stacks, geometries, train_config, n=steps.n, reconstruct=reconstruct, progress=progress
        )
    except TrainingError as exc:
        raise TrainingError(f"{exc}; no results file was written") from exc


def _denoise(
    denoiser: Denoiser, volume: np.ndarray, step: int, output: str, keep_low: float | None
) -> np.ndarray:
    import numpy as np

    from .learn import denoise_volume

    clean = np.asarray(denoise_volume(denoiser, volume, keep_low=keep_low or 0.0), np.float32)
    if not np.isfinite(clean).all():
        raise ModelError(
            f"the denoiser's output for time step {step} is not finite (a broken model?); "
            f"{output} keeps the steps before it, and this step's FBP with an unwritten (NaN) "
            "denoised slot"
        )
    return clean


def reconstruct_file(
    config: ReconstructConfig,
    *,
    progress: Callable[[int, int], None] | None = None,
    train_progress: Callable[[Progress], None] | None = None,
) -> ReconstructResult:
    """Reconstruct the selected time steps of ``config.input`` into ``config.output``.

    Method ``"n2i"`` first trains the denoiser (``train_progress(p)`` receives each
    :class:`~n2i_stream.learn.Progress`) or loads and checks ``n2i.model``; nothing is written
    until it exists. Then each step is read chunk by chunk, corrected, reconstructed (and
    denoised) and written (and flushed) before the next, so the output can be followed while it
    grows. ``progress(done, total)`` is called after every step.
    """
    from .config import to_mapping
    from .io.dxchange import DataExchangeFile
    from .io.results import ResultsWriter

    start = time.perf_counter()
    n2i = config.n2i
    # Checked before any work: an "auto" centre search and training can take a while.
    outputs = {"--out": config.output}
    if n2i is not None and n2i.save_model:
        outputs["--save-model"] = n2i.save_model
    for option, path in outputs.items():
        if Path(path).exists() and not config.overwrite:
            raise DataFileError(path, None, f"exists; choose another {option} or pass --overwrite")
        if not Path(path).resolve().parent.is_dir():
            raise DataFileError(path, None, "its directory does not exist")
    training = n2i is not None and n2i.trains
    train_config = n2i.train_config() if training else None
    denoiser = _load_model(n2i) if n2i is not None and not training else None
    keep_low = n2i.keep_low if n2i is not None else None
    with DataExchangeFile(config.input) as scan:
        steps = ScanSteps(scan, config)
        chosen = training_steps(steps, n2i) if n2i is not None and training else range(0)
        center = resolve_center(steps, config)
        rows, n, _ = steps.volume_shape
        attrs: dict[str, Any] = {
            "source": str(Path(config.input).resolve()),
            "method": config.method,
            "center_offset": center,
            "filter": config.filter,
            "oversample": config.oversample,
            "keep_low": keep_low or 0.0,
            "time_step_rule": steps.steps.rule,
            "first_row": steps.rows.start,
            "detector_shape": [scan.rows, scan.cols],
        }
        info = None
        if n2i is not None:
            if denoiser is not None:
                from .learn import check_compatible

                first = steps.selected[0]
                check_compatible(
                    denoiser,
                    geometry=steps.geometry(first, center),
                    n=steps.n,
                    network=n2i.network,
                    context=n2i.context,
                    strategy=n2i.strategy,
                )
                info = model_info(denoiser, source=str(Path(str(n2i.model)).resolve()))
                loss_note = "the model file's training history, as it was reported"
            else:
                assert train_config is not None
                denoiser = _train(steps, config, center, chosen, train_config, train_progress)
                saved = None
                if n2i.save_model:
                    from .learn import save_checkpoint

                    saved = str(save_checkpoint(denoiser, n2i.save_model).resolve())
                info = model_info(denoiser, source="trained", saved_to=saved)
                attrs["training_steps"] = list(chosen)
                loss_note = "this run's training, one value per iteration"
            attrs["strategy"] = denoiser.strategy
            attrs["model"] = info
            attrs["training_config"] = to_mapping(denoiser.config)
            attrs["training_loss"] = loss_note
        clipped = 0
        with ResultsWriter(
            config.output,
            rows=rows,
            n=n,
            kinds=_KINDS[config.method],
            config=to_mapping(config),
            attrs=attrs,
            overwrite=config.overwrite,
        ) as writer:
            if denoiser is not None:
                writer.append_loss([value for _, value in denoiser.loss_history])
            for done, step in enumerate(steps.selected, start=1):
                volume, step_clipped = fbp_step(
                    steps,
                    step,
                    center_offset=center,
                    window=config.filter,
                    oversample=config.oversample,
                )
                writer.write_step("fbp", step, volume)
                if denoiser is not None:
                    writer.write_step(
                        "denoised", step, _denoise(denoiser, volume, step, config.output, keep_low)
                    )
                clipped += step_clipped
                if progress is not None:
                    progress(done, len(steps.selected))
        if clipped:
            log.warning("%s: clipped %d transmissions to stay finite", scan.path, clipped)
        return ReconstructResult(
            output=Path(config.output),
            time_steps=tuple(steps.selected),
            shape=steps.volume_shape,
            center_offset=center,
            clipped=clipped,
            dropped_frames=steps.steps.dropped,
            seconds=time.perf_counter() - start,
            model=info,
        )
