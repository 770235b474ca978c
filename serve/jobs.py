"""Background jobs (uploads to ingest, trainings): one at a time in a worker thread, each with a
JSON record under RAGTUNE_HOME/jobs/ that survives a restart (a job running when the server
stopped is marked failed, not left "running")."""

from __future__ import annotations

import json
import secrets
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ragtune.platform.errors import NotFoundError, OverloadedError
from ragtune.platform.files import write_json


class Jobs:
    def __init__(self, folder: Path, max_pending: int = 64):
        self.folder, self.max_pending = folder, max_pending
        self._pending = 0  # queued or running
        self.folder.mkdir(parents=True, exist_ok=True)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ragtune-job")
        self._lock = threading.Lock()
        for f in self.folder.glob("job-*.json"):  # interrupted by a stop: say so
            rec = json.loads(f.read_text())
            if rec["status"] in ("queued", "running"):
                rec.update(status="failed", error="the server stopped before the job finished")
                self._write(rec)

    def _path(self, job_id: str) -> Path:
        return self.folder / f"{job_id}.json"

    def _write(self, rec: dict[str, Any]) -> None:
        with self._lock:
            write_json(self._path(rec["id"]), rec)

    def get(self, job_id: str) -> dict[str, Any]:
        path = self._path(job_id)
        if not job_id.startswith("job-") or "/" in job_id or not path.exists():
            raise NotFoundError(f"no job {job_id!r}")
        return json.loads(path.read_text())

    def submit(self, kind: str, params: dict[str, Any], fn: Callable[[dict], Any],
               owner: str | None = None) -> dict[str, Any]:
        with self._lock:
            self._refuse_when_full()
            self._pending += 1
        rec = {"id": f"job-{secrets.token_hex(6)}", "object": "job", "kind": kind,
               "status": "queued", "params": params, "owner": owner, "created_at": time.time(),
               "started_at": None, "finished_at": None, "result": None, "error": None}
        try:
            self._write(rec)
        except BaseException:
            self._release()
            raise

        def run() -> None:
            try:
                rec.update(status="running", started_at=time.time())
                self._write(rec)
                try:
                    rec["result"] = fn(rec)
                    rec["status"] = "succeeded"
                except Exception as e:  # the job's own failure, reported in its record
                    rec.update(status="failed", error=str(e) or traceback.format_exc(limit=3))
                rec["finished_at"] = time.time()
                self._write(rec)
            finally:  # a record that cannot be written (a full disk) still frees its slot
                self._release()

        self._pool.submit(run)
        return rec

    def _release(self) -> None:
        with self._lock:
            self._pending -= 1

    def check_room(self) -> None:
        """Raise the queue-full 429 now (before a route saves the files a job would read)."""
        with self._lock:
            self._refuse_when_full()

    def _refuse_when_full(self) -> None:  # under the lock
        if self._pending >= self.max_pending:
            raise OverloadedError(f"{self._pending} jobs are queued or running, the most this "
                                  "server takes (RAGTUNE_MAX_PENDING_JOBS): retry later")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
