"""Answers and the feedback on them: `RAGTUNE_HOME/feedback/feedback.db` (SQLite).

Every answer the API gives (chat completions and responses, unless the request says `store:
false` or `RAGTUNE_RECORD_ANSWERS` is off) is recorded with what it used: the model label (an
adapter's name@version), the collection and the index generation it read, the retrieved chunks
(id, source, text, whether the answer cited it), a hash of the prompt the model saw, the
question and the answer. `POST /v1/feedback` attaches a rating (up or down), an optional
correction and comment, to an answer by its response id; `ragtune feedback triage`
(evals/triage.py) turns the negative ones into data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from ragtune.platform.errors import NotFoundError, RagtuneError

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    id TEXT PRIMARY KEY, created REAL NOT NULL, owner TEXT NOT NULL, model TEXT NOT NULL,
    adapter TEXT, collection TEXT, generation INTEGER, prompt_hash TEXT NOT NULL,
    question TEXT NOT NULL, answer TEXT NOT NULL, chunks TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY, answer_id TEXT NOT NULL REFERENCES answers(id), created REAL NOT NULL,
    owner TEXT NOT NULL, rating TEXT NOT NULL, correction TEXT, comment TEXT);
CREATE INDEX IF NOT EXISTS feedback_answer ON feedback(answer_id);
"""
log = logging.getLogger("ragtune.feedback")
MAX_TEXT = 20_000  # characters of a correction or comment


def prompt_hash(messages: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False)
                          .encode()).hexdigest()[:16]


class FeedbackStore:
    def __init__(self, home: Path):
        self.path = Path(home) / "feedback" / "feedback.db"
        self._lock = threading.Lock()
        self._ready = False

    def _db(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        if not self._ready:
            with self._lock:
                db.executescript(SCHEMA)
                db.execute("PRAGMA journal_mode=WAL")
                self._ready = True
        return db

    def record(self, answer_id: str, owner: str, question: str, answer: Any,
               messages: list[dict[str, Any]]) -> None:
        """One answer (platform.assistant.Answer) and what it used."""
        used = answer.used
        chunks = [{"chunk_id": c["chunk_id"], "source": c["source"], "text": c["text"],
                   "cited": c["cited"], "in_prompt": c["index"] is not None}
                  for c in answer.citations]
        with closing(self._db()) as db, db:
            db.execute("INSERT OR REPLACE INTO answers VALUES (?,?,?,?,?,?,?,?,?,?,?)", (
                answer_id, time.time(), owner, used.get("model") or "", used.get("adapter"),
                used.get("collection"), used.get("generation"), prompt_hash(messages), question,
                answer.text, json.dumps(chunks, ensure_ascii=False)))

    def safe_record(self, *args: Any) -> None:
        """`record`, logged instead of raised: an answer is never lost to its record."""
        try:
            self.record(*args)
        except (OSError, sqlite3.Error) as e:
            log.warning("answer %s not recorded for feedback: %s", args[0], e)

    def answer(self, answer_id: str, owner: str | None = None) -> dict[str, Any]:
        with closing(self._db()) as db:
            row = db.execute("SELECT * FROM answers WHERE id=?", (answer_id,)).fetchone()
        if row is None or (owner is not None and row["owner"] != owner):
            raise NotFoundError(f"no recorded answer {answer_id!r}: feedback refers to the `id` "
                                "of a chat completion or response this key received (answers "
                                "sent with store: false are not recorded)")
        out = dict(row)
        out["chunks"] = json.loads(out["chunks"])
        return out

    def add(self, answer_id: str, owner: str | None, rating: str, correction: str | None,
            comment: str | None) -> dict[str, Any]:
        if rating not in ("up", "down"):
            raise RagtuneError("rating: 'up' or 'down'", param="rating")
        for name, text in (("correction", correction), ("comment", comment)):
            if text is not None and (not isinstance(text, str) or len(text) > MAX_TEXT):
                raise RagtuneError(f"{name}: text of at most {MAX_TEXT} characters", param=name)
        self.answer(answer_id, owner)  # 404 for another key's answer
        fb = {"id": f"fb_{secrets.token_hex(12)}", "object": "feedback",
              "response_id": answer_id, "created_at": int(time.time()), "rating": rating,
              "correction": correction, "comment": comment}
        with closing(self._db()) as db, db:
            db.execute("INSERT INTO feedback VALUES (?,?,?,?,?,?,?)", (
                fb["id"], answer_id, time.time(), owner or "", rating, correction, comment))
        return fb

    def forget(self, answer_id: str) -> None:
        """An answer's record and the feedback on it, gone (a deleted response)."""
        if not self.path.exists():
            return
        with closing(self._db()) as db, db:
            db.execute("DELETE FROM feedback WHERE answer_id=?", (answer_id,))
            db.execute("DELETE FROM answers WHERE id=?", (answer_id,))

    def items(self, rating: str | None = None, owner: str | None = None) -> list[dict[str, Any]]:
        """Feedback joined with its answer, oldest first."""
        sql = ("SELECT f.id AS feedback_id, f.rating, f.correction, f.comment, f.created AS "
               "feedback_at, a.* FROM feedback f JOIN answers a ON a.id = f.answer_id")
        where, args = [], []
        if rating:
            where.append("f.rating = ?")
            args.append(rating)
        if owner is not None:
            where.append("f.owner = ?")
            args.append(owner)
        if where:
            sql += " WHERE " + " AND ".join(where)
        if not self.path.exists():
            return []
        with closing(self._db()) as db:
            rows = [dict(r) for r in db.execute(sql + " ORDER BY f.created", args)]
        for r in rows:
            r["chunks"] = json.loads(r["chunks"])
        return rows
