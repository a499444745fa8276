"""``n2i-stream serve`` as a child process in tests: started, its ready line read, cleaned up."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class ServeProcess:
    """A running ``serve``: :attr:`proc`, :attr:`ready` (the ready line's JSON) and every line
    it printed so far (stdout and stderr together) in :attr:`output`."""

    def __init__(self, args: list[str], timeout: float) -> None:
        command = [sys.executable, "-m", "n2i_stream", "serve", *args]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.output: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.ready: dict[str, Any] = self._ready(timeout)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def _ready(self, timeout: float) -> dict[str, Any]:
        while True:
            line = self._lines.get(timeout=timeout)
            if line is None:
                raise AssertionError("serve ended before it was ready:\n" + "".join(self.output))
            if line.startswith("{"):
                return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextmanager
def serving(*args: str, timeout: float = 60.0) -> Iterator[ServeProcess]:
    """Start ``n2i-stream serve ARGS`` and wait for its ready line (``timeout`` s); killed on
    the way out if it is still running."""
    process = ServeProcess(list(args), timeout)
    try:
        yield process
    finally:
        process.close()
