"""uvicorn's supervisor for `--workers N`, with two changes to how it watches its workers.

- Its health check waits for a worker's answer on a pipe whose other end the supervisor itself
  holds, so a worker that dies while starting is noticed only when the timeout (120 s here: a
  worker imports torch and loads the model first) runs out, and Ctrl-C waits as long. Here the
  wait also ends as soon as the worker is gone or a signal has arrived.
- A worker that cannot start (app.app_from_env prints why in one line and exits with uvicorn's
  STARTUP_FAILURE; e.g. the checkpoint was deleted since the server started) would fail the same
  way again: it is not restarted, and the supervisor says in one line how many workers are left.
  When none is left, the server stops. Workers that die otherwise are replaced, as uvicorn does.
"""
from __future__ import annotations

import sys
import time
from typing import Callable

from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

POLL_S = 0.2   # how often a health check looks at the worker and the signal queue while it waits


class Worker(Process):
    """A worker process whose health check gives up when it dies or `interrupted()` is true."""

    def __init__(self, config, sockets, interrupted: Callable[[], bool]) -> None:
        super().__init__(config, sockets)
        self.interrupted = interrupted

    def __getstate__(self) -> dict:
        # The worker process gets this object (its target is a bound method); the supervisor's
        # callback stays behind.
        return {k: v for k, v in self.__dict__.items() if k != "interrupted"}

    def _healthcheck(self, timeout: float) -> bool | None:
        """The worker's "started" flag; None when it is dead or silent until `timeout`; False
        (alive, not ready) when a signal is waiting, so the supervisor can act on it first."""
        try:
            self.parent_conn.send(b"ping")
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.parent_conn.poll(POLL_S):
                    return self.parent_conn.recv()
                if not self.process.is_alive():
                    return None
                if self.interrupted():
                    return False
        except (OSError, EOFError):
            pass
        return None


class Supervisor(Multiprocess):
    def spawn(self) -> Worker:
        worker = Worker(self.config, self.sockets, lambda: bool(self.signal_queue) or self.should_exit.is_set())
        worker.start()
        return worker

    def init_processes(self) -> None:
        self.processes = [self.spawn() for _ in range(self.processes_num)]

    def keep_subprocess_alive(self) -> None:
        for worker in list(self.processes):
            if self.should_exit.is_set():
                return
            if worker.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            worker.kill()                      # hung, or dead already: reaped by join, never a zombie
            worker.join()
            if self.should_exit.is_set():
                return
            if worker.exitcode == STARTUP_FAILURE:
                self.processes.remove(worker)
                say(f"a worker process could not start (see above); serving with {len(self.processes)} of "
                    f"{self.processes_num} workers" + ("" if self.processes else ", so stopping"))
                if not self.processes:
                    self.should_exit.set()
                continue
            say(f"worker process {worker.pid} ended (exit code {worker.exitcode}); starting another")
            self.processes[self.processes.index(worker)] = self.spawn()


def say(line: str) -> None:
    print(f"serve: {line}", file=sys.stderr, flush=True)
