"""``n2i-stream simulate``: a simulated dynamic scan into a Data Exchange file (and its truth).

The scan file follows :mod:`n2i_stream.io.dxchange_writer` (``frames_per_step`` set, the
simulation parameters under ``/process/simulation``). The truth file holds
``/truth/attenuation`` ``(steps, rows, n, n)`` float32 (attenuation per pixel), ``/truth/theta``
``(steps, per_step)`` (the exact angles, degrees), ``/truth/step_offset`` (nominal offset of each
step modulo the increment, degrees) and ``/truth/bubble_radius`` (pixels, 0 before the dynamics),
with the parameters and the material and water attenuation as attributes of ``/truth``.

With ``--stream ENDPOINT`` the scan is not written but streamed like a detector
(:mod:`n2i_stream.sim.stream`): frames in ``--format`` (``n2i`` with kinds and angles,
``array-1.0`` with neither, ``gigafrost`` with kinds) at ``--rate`` frames per second over PUSH
(or PUB). The service learns angles and id runs from the scan configuration:
``--scan-config FILE`` writes it, ``--control ENDPOINT`` sends it to a running
``n2i-stream serve`` (``configure``) before the first frame; ``--scan-extra JSON`` adds keys to
it (e.g. ``{"output": "results.h5", "train_minutes": 1}``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ._streaming import (
    add_scan_arguments,
    add_stream_arguments,
    announce_scan,
    scan_extra,
    send_frames,
)

HELP = "simulate a dynamic scan into a Data Exchange file"

#: CLI option -> SimConfig field; defaults come from SimConfig so they live in one place.
_OPTIONS: dict[str, tuple[str, type, str]] = {
    "--width": ("width", int, "detector columns = reconstruction size"),
    "--rows": ("rows", int, "detector rows (slices)"),
    "--steps": ("steps", int, "time steps (half turns)"),
    "--per-step": ("per_step", int, "projection frames per time step"),
    "--interlace": ("interlace", int, "successive steps are offset by increment / interlace"),
    "--jitter": ("jitter", float, "angle jitter, standard deviation in increments"),
    "--photons": ("photons", float, "mean open-beam photons per pixel"),
    "--dynamics-start": ("dynamics_start", int, "time step at which the water bubble appears"),
    "--darks": ("n_darks", int, "dark frames before the scan"),
    "--flats": ("n_flats", int, "flat frames before the scan"),
    "--flats-end": ("n_flats_end", int, "flat frames after the scan"),
    "--center-offset": ("center_offset", float, "rotation axis offset from detector centre, px"),
    "--seed": ("seed", int, "random seed (phantom, angles, noise)"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..sim.scan import SimConfig

    defaults = SimConfig()
    parser.add_argument("--out", type=Path, help="Data Exchange file to write (or --stream)")
    parser.add_argument("--truth", type=Path, help="also write the ground truth to this file")
    for option, (field, kind, text) in _OPTIONS.items():
        parser.add_argument(
            option,
            dest=field,
            type=kind,
            metavar="N" if kind is int else "X",
            default=getattr(defaults, field),
            help=text + " (%(default)s)",
        )
    parser.add_argument(
        "--noiseless", action="store_true", help="rounded expected counts, no noise"
    )
    live = parser.add_argument_group("streaming like a detector")
    add_stream_arguments(live, required=False)
    live.add_argument("--scan-id", default="sim", help="scan id in the scan configuration (sim)")
    add_scan_arguments(live)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from ..config import to_mapping
    from ..io.dxchange_writer import DataExchangeWriter, write_truth
    from ..sim.scan import DynamicScan, SimConfig, describe

    fields = {field: getattr(args, field) for field, _, _ in _OPTIONS.values()}
    config = SimConfig(**fields, noise=not args.noiseless)
    if args.stream is not None:
        return _stream(args, config)
    if args.out is None:
        from ..errors import ConfigError

        raise ConfigError("give --out FILE to write the scan, or --stream ENDPOINT to stream it")
    scan = DynamicScan(config)
    print(f"simulating {describe(config)}")
    start = time.perf_counter()
    parameters = {"simulation": to_mapping(config)}
    with DataExchangeWriter(
        args.out,
        rows=config.rows,
        cols=config.width,
        frames_per_step=config.per_step,
        parameters=parameters,
    ) as writer:
        for frame in tqdm(
            scan.frames(), total=config.n_frames, unit="frame", disable=None, leave=False
        ):
            writer.write_frame(frame)
    print(f"wrote {args.out}: {config.n_frames} frames in {time.perf_counter() - start:.1f} s")
    if args.truth is not None:
        steps = range(config.steps)
        write_truth(
            args.truth,
            (scan.ground_truth(s) for s in tqdm(steps, unit="step", disable=None, leave=False)),
            shape=(config.steps, config.rows, config.n, config.n),
            datasets={
                "theta": scan.theta.reshape(config.steps, config.per_step),
                "step_offset": config.step_offsets(),
                "bubble_radius": np.array(
                    [getattr(scan.phantom.bubble(s), "r", 0.0) for s in steps]
                ),
            },
            attrs={
                **to_mapping(config),
                "mu_material": scan.phantom.mu_material,
                "mu_water": scan.phantom.mu_water,
            },
        )
        print(f"wrote {args.truth}: ground truth of {config.steps} steps")
    return 0


def _stream(args: argparse.Namespace, config: object) -> int:
    from ..sim.scan import DynamicScan, describe
    from ..sim.stream import scan_config_for

    extra = scan_extra(args)
    scan = DynamicScan(config)  # type: ignore[arg-type]
    scan_config = scan_config_for(config, scan_id=args.scan_id, theta=scan.theta, **extra)  # type: ignore[arg-type]
    announce_scan(args, scan_config)
    print(f"streaming {describe(config)} as {args.format} to {args.stream}")  # type: ignore[arg-type]
    send_frames(args, scan.frames())
    return 0
