"""Time-step assembly: ids to steps and angles, id faults, darks/flats, bounded memory."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pytest

from n2i_stream.config import from_mapping
from n2i_stream.errors import ConfigError, DataError, ServiceError
from n2i_stream.service.assembly import Assembler, AssemblyConfig, TimeStep
from n2i_stream.wire import Frame, FrameHeader

ROWS, COLS, FPS, STEPS = 4, 5, 10, 6
DARK_IDS, FLAT_IDS, FIRST_PROJECTION = (0, 4), (4, 4), 8
DARK, FLAT = 100, 4100


def config(**overrides) -> AssemblyConfig:
    fields = dict(
        rows=ROWS,
        cols=COLS,
        frames_per_step=FPS,
        steps=STEPS,
        angle_start=1.0,
        angle_step=0.5,
        dark_ids=(DARK_IDS,),
        flat_ids=(FLAT_IDS,),
        projection_ids=((FIRST_PROJECTION, FPS * STEPS),),
    )
    return AssemblyConfig(**{**fields, **overrides})


def pixels(fid: int) -> np.ndarray:
    """A distinct, recognisable projection for every id (counts between dark and flat)."""
    return (1000 + 7 * fid + np.arange(ROWS * COLS).reshape(ROWS, COLS)).astype(np.uint16)


def frame(fid: int, data: np.ndarray | None = None, *, kind=None, wire_id=None, angle=None, t=0.0):
    data = pixels(fid) if data is None else data
    header = FrameHeader(
        frame_id=fid if wire_id is None else wire_id,
        shape=data.shape,
        dtype=data.dtype,
        kind=kind,
        angle=angle,
        format="n2i" if kind else "array-1.0",
    )
    return Frame(header, data, received_at=t)


def references() -> list[Frame]:
    darks = [frame(i, np.full((ROWS, COLS), DARK, np.uint16)) for i in range(*_span(DARK_IDS))]
    flats = [frame(i, np.full((ROWS, COLS), FLAT, np.uint16)) for i in range(*_span(FLAT_IDS))]
    return darks + flats


def _span(run: tuple[int, int]) -> tuple[int, int]:
    return run[0], run[0] + run[1]


def projection_ids() -> list[int]:
    return list(range(FIRST_PROJECTION, FIRST_PROJECTION + FPS * STEPS))


def run(assembler: Assembler, frames: Iterable[Frame], *, flush: bool = True) -> list[TimeStep]:
    steps: list[TimeStep] = []
    for f in frames:
        steps.extend(assembler.add(f))
    if flush:
        steps.extend(assembler.flush())
    return steps


def check_step_data(step: TimeStep, expected_ids: list[int]) -> None:
    assert step.frame_ids.tolist() == expected_ids
    np.testing.assert_array_equal(step.projections, np.stack([pixels(i) for i in expected_ids]))
    ordinals = np.array(expected_ids) - FIRST_PROJECTION
    np.testing.assert_allclose(step.angles, 1.0 + 0.5 * ordinals)


@pytest.mark.parametrize("hold", [False, True])
def test_frames_in_order_give_complete_steps_with_angles_and_references(hold):
    asm = Assembler(config(hold_frames=hold))
    frames = references() + [frame(i, t=float(i)) for i in projection_ids()]
    steps = run(asm, frames)
    assert [s.index for s in steps] == list(range(STEPS))
    for s in steps:
        assert s.complete
        first = FIRST_PROJECTION + s.index * FPS
        check_step_data(s, list(range(first, first + FPS)))
        assert s.last_frame_at == first + FPS - 1
        assert len(s.darks) == len(s.flats) == 1
        np.testing.assert_array_equal(s.darks[0], DARK)
        np.testing.assert_array_equal(s.flats[0], FLAT)
        expected = -np.log((s.projections - DARK) / (FLAT - DARK))
        np.testing.assert_allclose(s.line_integrals().data, expected, rtol=1e-6)
        s.release()
    c = asm.counters()
    assert c.received == len(frames)
    assert (c.bad, c.duplicate, c.out_of_order, c.dropped, c.outside_range, c.late) == (0,) * 6
    assert c.steps_emitted == STEPS
    assert asm.finished


def test_each_step_is_emitted_when_its_last_frame_arrives():
    asm = Assembler(config())
    run(asm, references(), flush=False)
    ids = projection_ids()
    for i in ids[: FPS - 1]:
        assert asm.add(frame(i)) == ()
    (step,) = asm.add(frame(ids[FPS - 1]))
    assert step.index == 0
    assert step.complete


def test_shuffled_arrival_within_a_window_is_reordered_and_counted(rng):
    asm = Assembler(config())
    ids = np.array(projection_ids())
    for block in range(0, ids.size, 7):  # a window shorter than a step
        rng.shuffle(ids[block : block + 7])
    steps = run(asm, references() + [frame(int(i)) for i in ids])
    assert sorted(s.index for s in steps) == list(range(STEPS))
    for s in steps:
        first = FIRST_PROJECTION + s.index * FPS
        check_step_data(s, list(range(first, first + FPS)))
    expected = sum(int(ids[k] < ids[:k].max()) for k in range(1, ids.size))
    assert expected > 0
    assert asm.counters().out_of_order == expected
    assert asm.counters().dropped == 0


def test_duplicates_are_counted_and_ignored():
    asm = Assembler(config())
    ids = projection_ids()
    frames = references() + [frame(i) for i in ids]
    repeated = [frame(ids[3], np.zeros((ROWS, COLS), np.uint16)), frame(0), frame(ids[-1])]
    frames[20:20] = repeated[:2]
    frames.append(repeated[2])
    steps = run(asm, frames)
    assert asm.counters().duplicate == 3
    check_step_data(steps[0], ids[:FPS])  # the zeros sent under a repeated id did not land
    assert all(s.complete for s in steps)


@pytest.mark.parametrize("hold", [False, True])
def test_five_percent_dropped_frames_are_flagged_and_steps_use_what_arrived(rng, hold):
    asm = Assembler(config(hold_frames=hold))
    ids = projection_ids()
    lost = set(rng.choice(ids, size=len(ids) // 20, replace=False).tolist())
    assert lost
    steps = run(asm, references() + [frame(i) for i in ids if i not in lost])
    assert sorted(s.index for s in steps) == list(range(STEPS))
    for s in steps:
        first = FIRST_PROJECTION + s.index * FPS
        step_ids = range(first, first + FPS)
        missing = [i for i in step_ids if i in lost]
        assert s.missing_ids.tolist() == missing
        np.testing.assert_allclose(s.missing_angles, 1.0 + 0.5 * (np.array(missing) - 8))
        assert s.complete == (not missing)
        check_step_data(s, [i for i in step_ids if i not in lost])
        assert s.projections.shape == (FPS - len(missing), ROWS, COLS)
        assert s.dark_index.shape == s.flat_index.shape == (FPS - len(missing),)
        assert np.isfinite(s.line_integrals().data).all()
    c = asm.counters()
    assert c.dropped == len(lost)
    assert c.steps_incomplete == len({(i - FIRST_PROJECTION) // FPS for i in lost})


def test_a_step_is_closed_once_frames_two_steps_later_arrive():
    asm = Assembler(config())
    run(asm, references(), flush=False)
    ids = projection_ids()
    missing = ids[4]
    out = [s for i in ids[: 2 * FPS] if i != missing for s in asm.add(frame(i))]
    assert [s.index for s in out] == [1]  # step 0 waits for its missing frame
    (closed,) = asm.add(frame(ids[2 * FPS]))  # first frame of step 2 closes step 0
    assert closed.index == 0
    assert closed.missing_ids.tolist() == [missing]
    assert asm.add(frame(missing)) == ()  # too late now
    assert asm.counters().late == 1
    assert asm.counters().dropped == 1


def test_16_bit_ids_wrap_mid_scan():
    first = 65536 - 25  # the counter passes 65535 inside step 2
    cfg = config(dark_ids=(), flat_ids=(), projection_ids=((first, FPS * STEPS),), id_bits=16)
    asm = Assembler(cfg)
    uids = list(range(first, first + FPS * STEPS))
    frames = [frame(u - first + FIRST_PROJECTION, wire_id=u % 65536) for u in uids]
    frames[30], frames[31] = frames[31], frames[30]  # and one swap after the wrap
    steps = run(asm, frames)
    assert [s.index for s in steps] == list(range(STEPS))
    assert all(s.complete for s in steps)
    assert steps[2].frame_ids.tolist() == uids[20:30]
    assert steps[3].frame_ids.tolist() == uids[30:40]
    np.testing.assert_array_equal(steps[3].projections[0], pixels(30 + FIRST_PROJECTION))
    c = asm.counters()
    assert c.wrapped == 1
    assert c.out_of_order == 1
    assert c.outside_range == c.duplicate == 0
    # ids past 2**16 cannot come from a 16-bit counter
    assert asm.add(frame(0, wire_id=70000)) == ()
    assert asm.counters().bad_reasons == {"id_too_large": 1}


@pytest.mark.parametrize("hold", [False, True])
def test_flats_retaken_mid_scan_are_used_for_the_projections_after_them(hold):
    ids = projection_ids()
    second_flats = (FIRST_PROJECTION + FPS * STEPS, 3)  # ids after the projections' ids
    asm = Assembler(config(flat_ids=(FLAT_IDS, second_flats), hold_frames=hold))
    new_flat = 3000
    retake = [
        frame(i, np.full((ROWS, COLS), new_flat, np.uint16)) for i in range(*_span(second_flats))
    ]
    cut = 2 * FPS + 4  # in the middle of step 2
    frames = references() + [frame(i) for i in ids[:cut]] + retake + [frame(i) for i in ids[cut:]]
    steps = run(asm, frames)
    by_index = {s.index: s for s in steps}
    for s in steps:
        assert len(s.darks) == 1
    np.testing.assert_array_equal(by_index[1].flats[0], FLAT)
    mixed = by_index[2]
    assert len(mixed.flats) == 2
    assert mixed.flat_index.tolist() == [0] * 4 + [1] * (FPS - 4)
    np.testing.assert_array_equal(mixed.flats[1], new_flat)
    li = mixed.line_integrals().data
    np.testing.assert_allclose(
        li[3], -np.log((pixels(ids[cut - 1]) - DARK) / (FLAT - DARK)), rtol=1e-6
    )
    np.testing.assert_allclose(
        li[4], -np.log((pixels(ids[cut]) - DARK) / (new_flat - DARK)), rtol=1e-6
    )
    assert len(by_index[5].flats) == 1
    np.testing.assert_array_equal(by_index[5].flats[0], new_flat)
    assert asm.counters().outside_range == 0


def test_kinds_from_headers_group_references_by_arrival():
    cfg = config(dark_ids=(), flat_ids=(), projection_ids=())
    asm = Assembler(cfg)
    frames = [frame(i, np.full((ROWS, COLS), DARK + i, np.uint16), kind="dark") for i in range(2)]
    frames += [frame(i, np.full((ROWS, COLS), FLAT, np.uint16), kind="flat") for i in range(3)]
    frames.append(frame(1, np.full((ROWS, COLS), 0, np.uint16), kind="dark"))  # a repeat
    frames += [frame(i, kind="projection") for i in range(FPS)]
    frames += [frame(i, np.full((ROWS, COLS), 2 * FLAT, np.uint16), kind="flat") for i in range(3)]
    frames += [frame(i, kind="projection") for i in range(FPS, 2 * FPS)]
    steps = run(asm, frames)
    assert asm.counters().duplicate == 1
    assert steps[0].index == 0
    np.testing.assert_array_equal(steps[0].darks[0], DARK + 0.5)
    np.testing.assert_array_equal(steps[0].flats[0], FLAT)
    np.testing.assert_array_equal(steps[1].flats[0], 2 * FLAT)


def test_ids_outside_the_configured_runs_are_counted_not_filed():
    asm = Assembler(config())
    ids = projection_ids()
    strays = [frame(ids[-1] + 1), frame(ids[-1] + 500), frame(5, kind="projection")]
    steps = run(asm, references() + strays + [frame(i) for i in ids])
    assert asm.counters().outside_range == 3
    assert sum(s.projections.shape[0] for s in steps) == len(ids)


def test_frames_of_the_wrong_geometry_or_type_are_bad():
    asm = Assembler(config())
    assert asm.add(frame(8, np.zeros((ROWS + 1, COLS), np.uint16))) == ()
    assert asm.add(frame(8, np.zeros((ROWS, COLS), np.float32))) == ()
    assert asm.add(frame(8, pixels(8).astype(">u2"))) == ()  # other byte order: fine
    assert asm.add(frame(9, pixels(9).astype(np.uint8))) == ()  # narrower: fine
    c = asm.counters()
    assert c.bad_reasons == {"shape_mismatch": 1, "dtype_mismatch": 1}
    assert (c.bad, c.received) == (2, 4)


def test_flush_at_end_of_scan_keeps_partial_steps():
    asm = Assembler(config())
    ids = projection_ids()
    received = ids[: 3 * FPS + 3]  # the scan stops inside step 3
    steps = run(asm, references() + [frame(i) for i in received])
    assert [s.index for s in steps] == [0, 1, 2, 3]
    assert steps[-1].frame_ids.tolist() == received[-3:]
    assert not steps[-1].complete
    assert sum(s.projections.shape[0] for s in steps) == len(received)  # nothing received is lost
    assert asm.counters().dropped == FPS - 3  # only the rest of step 3; steps 4, 5 never began
    assert not asm.finished


def test_a_step_of_which_nothing_arrived_is_skipped_and_counted():
    asm = Assembler(config())
    ids = projection_ids()
    kept = ids[:FPS] + ids[2 * FPS :]
    steps = run(asm, references() + [frame(i) for i in kept])
    assert [s.index for s in steps] == [0, 2, 3, 4, 5]
    c = asm.counters()
    assert (c.steps_skipped, c.dropped) == (1, FPS)


def test_projections_before_any_reference_cannot_be_corrected():
    asm = Assembler(config())
    steps = run(asm, [frame(i) for i in projection_ids()[:FPS]])
    assert steps[0].dark_index.tolist() == [-1] * FPS
    with pytest.raises(DataError, match="before any dark or flat"):
        steps[0].line_integrals()


def test_given_references_correct_projections_until_new_sets_arrive():
    """A resumed scan starts from the darks and flats kept before the restart."""
    kept_dark = np.full((ROWS, COLS), 90.0, np.float32)
    kept_flat = np.full((ROWS, COLS), 3000.0, np.float32)
    asm = Assembler(config())
    asm.give_references(kept_dark, kept_flat)
    assert asm.references_closed == 2
    ids = projection_ids()
    first = run(asm, [frame(i) for i in ids[:FPS]], flush=False)[0]  # no references came
    (dark,), (flat,) = first.darks, first.flats
    np.testing.assert_array_equal(dark, kept_dark)
    np.testing.assert_array_equal(flat, kept_flat)
    assert np.isfinite(first.line_integrals().data).all()
    later = run(asm, [*references(), *(frame(i) for i in ids[FPS : 2 * FPS])])
    assert asm.references_closed == 4
    assert later[0].darks[0][0, 0] == DARK  # the sets that arrived took over
    assert later[0].flats[0][0, 0] == FLAT
    with pytest.raises(ServiceError, match="before the first frame"):
        asm.give_references(kept_dark, kept_flat)
    with pytest.raises(DataError, match=r"kept flat mean: expected shape \(4, 5\), got \(5, 4\)"):
        Assembler(config()).give_references(None, kept_flat.T)


def test_memory_stays_bounded_when_steps_are_released():
    long_scan = config(steps=40, spare_buffers=1, projection_ids=((FIRST_PROJECTION, 40 * FPS),))
    ids = range(FIRST_PROJECTION, FIRST_PROJECTION + 40 * FPS)
    asm = Assembler(long_scan)
    for i in ids:
        for s in asm.add(frame(i)):
            s.release()
            s.release()  # idempotent
    assert asm.counters().step_buffers_allocated == 0
    assert asm.counters().step_buffers_in_use == 0
    asm2 = Assembler(long_scan)
    held = [s for i in ids for s in asm2.add(frame(i))]  # a pipeline that never lets go
    assert len(held) == 40
    assert asm2.counters().step_buffers_allocated == 40 - (2 + 1 + 1)
    assert asm2.counters().step_buffers_in_use == 40
    for s in held[:10]:
        s.release()
    assert asm2.counters().step_buffers_in_use == 30


def tracked(fid: int, log: list[int]) -> Frame:
    """A frame that notes its id in ``log`` when released."""
    base = frame(fid)
    return Frame(base.header, base.data, 0.0, lambda: log.append(fid))


@pytest.mark.parametrize("hold", [False, True])
def test_add_takes_ownership_of_every_frame(hold):
    released: list[int] = []
    asm = Assembler(config(hold_frames=hold))
    ids = projection_ids()[:FPS]
    steps = run(asm, [tracked(i, released) for i in [*range(8), *ids[:-1]]], flush=False)
    steps += asm.add(tracked(ids[0], released))  # a duplicate: released at once
    steps += asm.add(tracked(999, released))  # outside range: released at once
    assert steps == []
    if hold:
        assert released == [*range(8), ids[0], 999]  # the projections wait for their step
    else:
        assert released == [*range(8), *ids[:-1], ids[0], 999]
    released.clear()
    (step,) = asm.add(tracked(ids[-1], released))
    assert released == ([] if hold else [ids[-1]])
    check_step_data(step, ids)
    step.release()
    assert sorted(released) == (sorted(ids) if hold else [ids[-1]])


def test_frames_held_counts_what_a_source_must_allow():
    assert config(close_lag=2).frames_held(pipeline_steps=3) == (2 + 1 + 3) * FPS + 2


def test_config_is_validated_and_builds_from_plain_data():
    with pytest.raises(ConfigError) as info:
        config(angle_step=None, projection_ids=((0, 5),), dark_ids=((3, 4),))
    message = str(info.value)
    assert "angle_start + angle_step" in message
    assert f"expected {FPS * STEPS} ids" in message
    assert "overlap" in message
    with pytest.raises(ConfigError, match="one per projection"):
        config(angle_step=None, angles=(0.0, 1.0))
    cfg = from_mapping(
        AssemblyConfig,
        {
            "rows": 2,
            "cols": 3,
            "frames_per_step": 2,
            "steps": 2,
            "angles": [0, 90, 1, 91],
            "dark_ids": [[0, 2]],
            "projection_ids": [[2, 4]],
            "id_bits": 16,
        },
        source="control message",
    )
    assert cfg.dark_ids == ((0, 2),)
    np.testing.assert_array_equal(cfg.projection_angles(), [0, 90, 1, 91])
    with pytest.raises(ConfigError, match="unknown key 'fps'"):
        from_mapping(AssemblyConfig, {"rows": 2, "cols": 3, "fps": 2, "steps": 1})


def test_header_angles_win_when_preferred():
    ids = projection_ids()[:FPS]
    for prefer, expected in [(True, 33.0), (False, 1.0)]:
        asm = Assembler(config(prefer_header_angle=prefer))
        steps = run(asm, [frame(i, angle=33.0 if i == ids[0] else None) for i in ids])
        assert steps[0].angles[0] == expected


@pytest.mark.parametrize("fmt", ["n2i", "array-1.0", "gigafrost"])
def test_every_dialect_assembles_the_same_through_a_source(fmt):
    from n2i_stream.io.memory_source import MemoryFrameSource

    asm = Assembler(config())
    refs = [
        (f.header.frame_id, f.data, "dark" if f.header.frame_id < 4 else "flat")
        for f in references()
    ]
    sent = refs + [(i, pixels(i), "projection") for i in projection_ids()]
    steps = []
    with MemoryFrameSource(buffers=4, buffer_bytes=ROWS * COLS * 2) as source:
        for fid, data, kind in sent:
            assert source.push(data, frame_id=fid, kind=kind, fmt=fmt)
            received = source.recv(timeout=0)
            assert received is not None
            with received:
                steps.extend(asm.add(received))
    steps.extend(asm.flush())
    assert [s.index for s in steps] == list(range(STEPS))
    for s in steps:
        first = FIRST_PROJECTION + s.index * FPS
        check_step_data(s, list(range(first, first + FPS)))
        np.testing.assert_array_equal(s.flats[0], FLAT)
    assert asm.counters().bad == asm.counters().outside_range == 0
