"""ZeroMQ CURVE on the control socket: the real control server refuses clients without an
authorised key (loopback, free ports); the handshake failure is observed on the client's
socket monitor, so nothing waits on a fixed sleep."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from n2i_stream import ConfigError
from n2i_stream.io.curve import CurveServer, KeyFiles, client_context, generate_keys
from n2i_stream.service.control import ControlHandler, ControlServer

FAILED_HANDSHAKE = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


class IdleService:
    """What ``ping`` needs of a service."""

    state = "idle"


@pytest.fixture
def keys(tmp_path: Path) -> KeyFiles:
    generate_keys(tmp_path / "stranger", clients=("stranger",))
    return generate_keys(tmp_path / "keys", clients=("bluesky",))


@pytest.fixture
def server(keys: KeyFiles) -> Iterator[str]:
    curve = CurveServer(keys.server_secret, authorized_keys=keys.authorized)
    control = ControlServer(
        "tcp://127.0.0.1:*", ControlHandler(IdleService()), context=curve.context
    )
    control.start()
    try:
        assert control.endpoint is not None
        yield control.endpoint
    finally:
        control.close()
        curve.close()


def ping(ctx: zmq.Context, endpoint: str) -> tuple[bytes | None, int]:
    """Send a ping on a REQ; returns (reply or None, the handshake events seen)."""
    sock = ctx.socket(zmq.REQ)
    sock.linger = 0
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | FAILED_HANDSHAKE)
    try:
        sock.connect(endpoint)
        sock.send(b'{"command": "ping"}')
        event = recv_monitor_message(monitor)["event"] if monitor.poll(10_000) else 0
        if event != zmq.EVENT_HANDSHAKE_SUCCEEDED:
            # refused: nothing can come back; a short poll proves no reply slipped through
            return (sock.recv() if sock.poll(200) else None), event
        return (sock.recv() if sock.poll(10_000) else None), event
    finally:
        sock.disable_monitor()
        monitor.close()
        sock.close()


def test_authorised_client_is_answered(server, keys):
    ctx = client_context(keys.server_public, keys.clients["bluesky"])
    try:
        reply, event = ping(ctx, server)
    finally:
        ctx.term()
    assert event == zmq.EVENT_HANDSHAKE_SUCCEEDED
    assert reply is not None
    assert b'"ok": true' in reply


def test_client_without_curve_is_refused(server):
    ctx = zmq.Context()
    try:
        reply, event = ping(ctx, server)
    finally:
        ctx.term()
    assert reply is None
    assert event & FAILED_HANDSHAKE


def test_client_with_an_unknown_key_is_refused(server, keys, tmp_path):
    stranger = tmp_path / "stranger" / "clients" / "stranger.key_secret"
    ctx = client_context(keys.server_public, stranger)
    try:
        reply, event = ping(ctx, server)
    finally:
        ctx.term()
    assert reply is None
    assert event == zmq.EVENT_HANDSHAKE_FAILED_AUTH


def test_key_files_are_checked(keys, tmp_path):
    with pytest.raises(ConfigError, match="holds no secret key"):
        CurveServer(keys.server_public)
    with pytest.raises(ConfigError, match="not a readable ZeroMQ key file"):
        CurveServer(tmp_path / "missing.key_secret")
