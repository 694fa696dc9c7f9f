"""Start a real Celery worker process for a test module and read back what it recorded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from celery import Celery

HERE = Path(__file__).resolve().parent
INTEGRATION = HERE.parent


class WorkerRecords:
    """The spans and log records a worker's processes wrote to ``out``."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def _read(self, pattern: str) -> list[dict[str, Any]]:
        records = []
        for path in sorted(self.out.glob(pattern)):
            for line in path.read_text().splitlines():
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass  # a line still being written
        return records

    def spans(self) -> list[dict[str, Any]]:
        """Every span the worker has finished so far."""
        return self._read("spans-*.jsonl")

    def logs(self) -> list[dict[str, Any]]:
        """Every log record the worker has written so far."""
        return self._read("logs-*.jsonl")

    def wait_for(
        self,
        predicate: Callable[[list[dict[str, Any]]], bool],
        what: str = "spans",
        timeout: float = 30.0,
    ) -> list[dict[str, Any]]:
        """Return the records once ``predicate`` holds for them (fails after ``timeout``)."""
        read = self.spans if what == "spans" else self.logs
        deadline = time.monotonic() + timeout
        while True:
            records = read()
            if predicate(records):
                return records
            if time.monotonic() > deadline:
                raise AssertionError(f"worker {what} never matched; got {records!r:.3000}")
            time.sleep(0.05)

    def process_spans(self, task_id: str, count: int = 1) -> list[dict[str, Any]]:
        """Wait for ``count`` process spans of task ``task_id``; return them by start time."""

        def found(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [
                s
                for s in spans
                if s["kind"] == "CONSUMER"
                and s["attributes"].get("messaging.message.id") == task_id
            ]

        spans = self.wait_for(lambda spans: len(found(spans)) >= count)
        return sorted(found(spans), key=lambda s: s["start"])


class Worker:
    """A ``celery worker`` subprocess on its own queue, with its records."""

    def __init__(self, broker: str, backend: str, out: Path, *, pool: str = "prefork",
                 concurrency: int = 2, mode: str = "hoptrace", queue: str | None = None,
                 extra_env: dict[str, str] | None = None) -> None:
        self.broker = broker
        self.backend = backend
        self.queue = queue or f"hoptrace-celery-{uuid.uuid4().hex[:10]}"
        self.out = out
        self.records = WorkerRecords(out)
        self.pool = pool
        self.concurrency = concurrency
        self.mode = mode
        self.extra_env = extra_env or {}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(INTEGRATION), os.environ.get("PYTHONPATH", "")]),
            "HOPTRACE_CELERY_BROKER": self.broker,
            "HOPTRACE_CELERY_BACKEND": self.backend,
            "HOPTRACE_CELERY_QUEUE": self.queue,
            "HOPTRACE_CELERY_OUT": str(self.out),
            "HOPTRACE_CELERY_MODE": self.mode,
            "HOPTRACE_CELERY_WORKER": "1",
            **self.extra_env,
        }
        self.out.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "celery_apps.traced_app", "worker",
                "-P", self.pool, "-c", str(self.concurrency), "-Q", self.queue,
                "-n", f"{self.queue}@%h", "--without-gossip", "--without-mingle",
                "--without-heartbeat", "-l", "INFO",
            ],
            env=env,
            stdout=(self.out / "worker.out").open("wb"),
            stderr=subprocess.STDOUT,
            cwd=str(INTEGRATION),
        )

    def wait_ready(self, app: Celery, timeout: float = 60.0) -> None:
        """Return once the worker has run a task from ``app`` (fails if it died first)."""
        result = app.send_task("traced.add", args=(1, 1), queue=self.queue)
        try:
            assert result.get(timeout=timeout) == 2
        except Exception:
            raise AssertionError(f"worker never became ready:\n{self.output()}") from None

    def output(self) -> str:
        path = self.out / "worker.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is None:
            return
        # Prefork: warm shutdown first (children flush and exit). A warm shutdown can wait on
        # the broker for seconds; every span is already exported (synchronously), so after a
        # short wait a cold shutdown (SIGQUIT) follows, and a kill as a last resort.
        steps = [(signal.SIGQUIT, 1.5), (signal.SIGKILL, 10)]
        if self.pool == "prefork":
            steps.insert(0, (signal.SIGTERM, 3))
        for sig, wait in steps:
            if self.process.poll() is not None:
                break
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue


def delete_queue(app: Celery, queue: str) -> None:
    """Delete ``queue`` from the broker (best effort)."""
    try:
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)
    except Exception:
        pass


@contextmanager
def running_worker(broker: str, backend: str, out: Path, producer: Celery,
                   **options: Any) -> Iterator[Worker]:
    """Start a worker, wait until it runs tasks, and stop it (and delete its queue) after."""
    worker = Worker(broker, backend, out, **options)
    worker.start()
    try:
        worker.wait_ready(producer)
        yield worker
    finally:
        worker.stop()
        delete_queue(producer, worker.queue)
