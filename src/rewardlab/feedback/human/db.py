"""The labeling database: SQLite in WAL mode, plain ``sqlite3``, versioned migrations.

Tables (schema version 1):

* ``annotators``: a name, an admin flag, and the token's salted scrypt hash (never the token). A token
  reads ``<annotator id>.<secret>``; the id finds the row, the secret is checked with
  :func:`hmac.compare_digest` against ``scrypt(secret, salt)``.
* ``items``: one pair to compare (``prompt``, responses ``a`` and ``b``), in a named queue, with the
  gold of each side when the task has gold, optional images per side (paths under the queue's media
  folder), ``meta`` (JSON) and ``wanted``: how many annotators should label it (1, or 2 for the overlap
  share used for inter-annotator agreement) and ``answers``: how many it has (kept with the labels, so
  finding open items reads a partial index instead of counting labels).
* ``leases``: at most one per item: the annotator it is shown to until ``expires``; an expired lease is
  re-offered to anyone.
* ``labels``: one per (item, annotator): ``a`` / ``b`` / ``tie`` / ``cant_tell`` / ``skip``, the reason,
  the seconds from showing to answer. Written in one ``BEGIN IMMEDIATE`` transaction with the lease
  check, committed (``synchronous=FULL``) before the server acknowledges it.

Each connection belongs to one thread (:class:`LabelDB` keeps one per thread).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rewardlab.utils import RewardlabError

CHOICES = ("a", "b", "tie", "cant_tell", "skip")
#: Choices that count as an answer (``skip`` only hides the item from that annotator).
ANSWERS = ("a", "b", "tie", "cant_tell")
MAX_REASON = 2000
MAX_REFUSED = 4096

_MIGRATIONS: list[str] = [
    # version 1
    """
    CREATE TABLE annotators (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        is_admin INTEGER NOT NULL DEFAULT 0,
        salt BLOB NOT NULL,
        token_hash BLOB NOT NULL,
        created REAL NOT NULL
    );
    CREATE TABLE items (
        id INTEGER PRIMARY KEY,
        queue TEXT NOT NULL,
        prompt TEXT NOT NULL,
        a TEXT NOT NULL,
        b TEXT NOT NULL,
        gold_a REAL,
        gold_b REAL,
        images_a TEXT NOT NULL DEFAULT '[]',
        images_b TEXT NOT NULL DEFAULT '[]',
        media_dir TEXT,
        meta TEXT NOT NULL DEFAULT '{}',
        wanted INTEGER NOT NULL DEFAULT 1 CHECK (wanted >= 1),
        answers INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL
    );
    CREATE INDEX items_queue ON items(queue, id);
    CREATE INDEX items_open ON items(queue, id) WHERE answers < wanted;
    CREATE TABLE leases (
        item_id INTEGER PRIMARY KEY REFERENCES items(id),
        annotator_id INTEGER NOT NULL REFERENCES annotators(id),
        started REAL NOT NULL,
        expires REAL NOT NULL
    );
    CREATE TABLE labels (
        id INTEGER PRIMARY KEY,
        item_id INTEGER NOT NULL REFERENCES items(id),
        annotator_id INTEGER NOT NULL REFERENCES annotators(id),
        choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'cant_tell', 'skip')),
        reason TEXT,
        seconds REAL,
        created REAL NOT NULL,
        UNIQUE (item_id, annotator_id)
    );
    CREATE INDEX labels_item ON labels(item_id);
    CREATE INDEX labels_annotator ON labels(annotator_id, item_id);
    """,
]
SCHEMA_VERSION = len(_MIGRATIONS)


class LabelError(RewardlabError):
    """A request the database refuses; ``status`` is the HTTP status the server answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Item:
    id: int
    queue: str
    prompt: str
    a: str
    b: str
    gold_a: float | None = None
    gold_b: float | None = None
    images_a: list[str] = field(default_factory=list)
    images_b: list[str] = field(default_factory=list)
    media_dir: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    wanted: int = 1


@dataclass(frozen=True)
class Label:
    item: Item
    annotator: str
    choice: str
    reason: str | None
    seconds: float | None
    created: float
    label_id: int


# ------------------------------------------------------------------------------------------- tokens
def hash_secret(secret: str, salt: bytes) -> bytes:
    """scrypt (RFC 7914) of a token's secret part: n=2**14, r=8, p=1, 32 bytes."""
    return hashlib.scrypt(secret.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)


def _split_token(token: str) -> tuple[int, str] | None:
    head, _, secret = token.partition(".")
    if not head.isdigit() or not secret or len(token) > 200:
        return None
    return int(head), secret


# ---------------------------------------------------------------------------------------- database
class LabelDB:
    """The labeling database at ``path`` (created and migrated on open)."""

    def __init__(self, path: Path | str, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self._local = threading.local()
        self._token_cache: dict[bytes, tuple[int, str, bool]] = {}
        self._refused: set[bytes] = set()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.write() as con:
            migrate(con)

    # ---------------------------------------------------------------- connections
    def connect(self) -> sqlite3.Connection:
        """This thread's connection (WAL, synchronous=FULL, foreign keys, 10 s busy timeout)."""
        con: sqlite3.Connection | None = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=True)
            con.row_factory = sqlite3.Row
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA foreign_keys=ON")
            self._local.con = con
        return con

    @contextmanager
    def write(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``): committed on exit, rolled back on an exception.

        ``durable``: the commit waits for fsync (``synchronous=FULL``), so it survives a power cut too; a
        lease is written without (``NORMAL``: it survives a killed process, and a lost lease only re-offers
        an item), and the next durable commit syncs it with its own.
        """
        con = self.connect()
        con.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    def integrity_check(self) -> str:
        return str(self.connect().execute("PRAGMA integrity_check").fetchone()[0])

    # ---------------------------------------------------------------- annotators
    def add_annotator(self, name: str, *, admin: bool = False) -> str:
        """Create annotator ``name``; returns its token (shown once: only a salted hash is stored)."""
        if not name or len(name) > 64 or not all(c.isalnum() or c in "._-" for c in name):
            raise RewardlabError(f"annotator name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
        secret, salt = secrets.token_urlsafe(24), secrets.token_bytes(16)
        with self.write() as con:
            if con.execute("SELECT 1 FROM annotators WHERE name = ?", (name,)).fetchone():
                raise RewardlabError(f"annotator {name!r} already exists in {self.path}")
            cur = con.execute(
                "INSERT INTO annotators (name, is_admin, salt, token_hash, created) VALUES (?, ?, ?, ?, ?)",
                (name, int(admin), salt, hash_secret(secret, salt), self.clock()),
            )
        return f"{cur.lastrowid}.{secret}"

    def authenticate(self, token: str | None) -> tuple[int, str, bool] | None:
        """``(annotator id, name, is_admin)`` for a valid token, else ``None``.

        A verified token is remembered by its SHA-256 so each request does not pay for scrypt again; so is a
        refused one (up to :data:`MAX_REFUSED`), so repeating a bad token cannot make the server burn scrypt.
        """
        if not token:
            return None
        key = hashlib.sha256(token.encode()).digest()
        hit = self._token_cache.get(key)
        if hit is not None or key in self._refused:
            return hit
        parts = _split_token(token)
        if parts is None:
            return None
        row = (
            self.connect()
            .execute("SELECT id, name, is_admin, salt, token_hash FROM annotators WHERE id = ?", (parts[0],))
            .fetchone()
        )
        if row is None or not hmac.compare_digest(hash_secret(parts[1], row["salt"]), row["token_hash"]):
            if len(self._refused) >= MAX_REFUSED:
                self._refused.clear()
            self._refused.add(key)
            return None
        who = (int(row["id"]), str(row["name"]), bool(row["is_admin"]))
        self._token_cache[key] = who
        return who

    def annotators(self) -> list[tuple[int, str, bool]]:
        rows = self.connect().execute("SELECT id, name, is_admin FROM annotators ORDER BY id").fetchall()
        return [(int(r["id"]), str(r["name"]), bool(r["is_admin"])) for r in rows]

    # ---------------------------------------------------------------- items
    def add_items(self, queue: str, items: Iterable[dict[str, Any]]) -> int:
        """Append items (dicts with ``prompt``, ``a``, ``b`` and optional ``gold_a``, ``gold_b``,
        ``images_a``, ``images_b``, ``media_dir``, ``meta``, ``wanted``) to ``queue``; returns the count."""
        now = self.clock()
        rows = [_item_row(queue, it, now) for it in items]
        with self.write() as con:
            con.executemany(
                "INSERT INTO items (queue, prompt, a, b, gold_a, gold_b, images_a, images_b, media_dir, meta, "
                "wanted, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        return len(rows)

    def item(self, item_id: int) -> Item | None:
        if not 0 <= item_id < 2**63:  # beyond SQLite's integers: no such item
            return None
        row = self.connect().execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()
        return _item(row) if row is not None else None

    def queues(self) -> list[str]:
        return [r[0] for r in self.connect().execute("SELECT DISTINCT queue FROM items ORDER BY queue")]

    # ---------------------------------------------------------------- leasing and labeling
    def next_item(self, queue: str, annotator_id: int, lease_s: float) -> Item | None:
        """The item this annotator should see next, leased to them for ``lease_s`` seconds.

        Their own unexpired lease first (a reload shows the same item); else the oldest item of ``queue``
        that still wants labels, that they have not answered or skipped, and that nobody else holds.
        """
        now = self.clock()
        with self.write(durable=False) as con:
            row = con.execute(
                "SELECT i.* FROM leases l JOIN items i ON i.id = l.item_id "
                "WHERE l.annotator_id = ? AND l.expires > ? AND i.queue = ? ORDER BY i.id LIMIT 1",
                (annotator_id, now, queue),
            ).fetchone()
            if row is None:
                row = con.execute(
                    "SELECT i.* FROM items i WHERE i.queue = ? AND i.answers < i.wanted "
                    "AND NOT EXISTS (SELECT 1 FROM labels x WHERE x.item_id = i.id AND x.annotator_id = ?) "
                    "AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.item_id = i.id AND l.expires > ?) "
                    "ORDER BY i.id LIMIT 1",
                    (queue, annotator_id, now),
                ).fetchone()
                if row is None:
                    return None
                con.execute(
                    "INSERT OR REPLACE INTO leases (item_id, annotator_id, started, expires) VALUES (?, ?, ?, ?)",
                    (row["id"], annotator_id, now, now + lease_s),
                )
        return _item(row)

    def submit(self, item_id: int, annotator_id: int, choice: str, reason: str | None = None,
               seconds: float | None = None) -> int:  # fmt: skip
        """Record one answer in a single transaction; returns the label id once committed.

        Refused with a :class:`LabelError`: an unknown item (404), an unknown choice, an oversized reason or
        a bad ``seconds`` (422), an item another annotator holds the lease of, or one this annotator
        already answered (409). Without a lease the answer is taken while the item still wants labels.
        ``seconds`` defaults to the time since the lease started.
        """
        if choice not in CHOICES:
            raise LabelError(422, f"choice: {choice!r} is not one of {', '.join(CHOICES)}")
        if reason is not None and len(reason) > MAX_REASON:
            raise LabelError(422, f"reason: {len(reason)} characters, at most {MAX_REASON}")
        if seconds is not None and not (math.isfinite(seconds) and 0 <= seconds <= 86_400):
            raise LabelError(422, "seconds: expected a number between 0 and 86400")
        now = self.clock()
        with self.write() as con:
            row = con.execute("SELECT wanted, answers FROM items WHERE id = ?", (item_id,)).fetchone()
            if row is None:
                raise LabelError(404, f"item {item_id}: no such item")
            if con.execute(
                "SELECT 1 FROM labels WHERE item_id = ? AND annotator_id = ?", (item_id, annotator_id)
            ).fetchone():
                raise LabelError(409, f"item {item_id}: already labeled by you (double submission)")
            lease = con.execute(
                "SELECT annotator_id, started, expires FROM leases WHERE item_id = ?", (item_id,)
            ).fetchone()
            mine = lease is not None and lease["annotator_id"] == annotator_id
            if lease is not None and not mine and lease["expires"] > now:
                raise LabelError(409, f"item {item_id}: leased to another annotator")
            if not mine and row["answers"] >= row["wanted"]:
                raise LabelError(409, f"item {item_id}: needs no more labels")
            if seconds is None and mine:
                seconds = max(0.0, now - float(lease["started"]))
            cur = con.execute(
                "INSERT INTO labels (item_id, annotator_id, choice, reason, seconds, created) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (item_id, annotator_id, choice, reason or None, seconds, now),
            )
            if choice != "skip":
                con.execute("UPDATE items SET answers = answers + 1 WHERE id = ?", (item_id,))
            if mine:
                con.execute("DELETE FROM leases WHERE item_id = ?", (item_id,))
        return int(cur.lastrowid or 0)

    # ---------------------------------------------------------------- reading
    def labels(self, queue: str | None = None, *, answers_only: bool = True) -> list[Label]:
        """Labels in the order they were committed (of ``queue``, or all)."""
        sql = (
            "SELECT l.id AS label_id, l.choice, l.reason, l.seconds, l.created AS label_created, "
            "a.name AS annotator, i.* FROM labels l JOIN items i ON i.id = l.item_id "
            "JOIN annotators a ON a.id = l.annotator_id WHERE 1"
        )
        args: list[Any] = []
        if queue is not None:
            sql += " AND i.queue = ?"
            args.append(queue)
        if answers_only:
            sql += " AND l.choice != 'skip'"
        rows = self.connect().execute(sql + " ORDER BY l.id", args).fetchall()
        return [
            Label(item=_item(r), annotator=r["annotator"], choice=r["choice"], reason=r["reason"],
                  seconds=r["seconds"], created=r["label_created"], label_id=int(r["label_id"]))
            for r in rows
        ]  # fmt: skip

    def progress(self, queue: str, annotator_id: int | None = None) -> dict[str, int]:
        """``done`` answers, ``remaining`` wanted answers, ``items`` in the queue, and ``mine``."""
        con = self.connect()
        items, wanted, done = con.execute(
            "SELECT COUNT(*), COALESCE(SUM(wanted), 0), COALESCE(SUM(answers), 0) FROM items WHERE queue = ?",
            (queue,),
        ).fetchone()
        out = {"items": int(items), "done": int(done), "remaining": max(0, int(wanted) - int(done))}
        if annotator_id is not None:
            out["mine"] = int(
                con.execute(
                    "SELECT COUNT(*) FROM labels l JOIN items i ON i.id = l.item_id "
                    "WHERE i.queue = ? AND l.annotator_id = ? AND l.choice != 'skip'",
                    (queue, annotator_id),
                ).fetchone()[0]
            )
        return out

    def count_answers(self, queue: str, choices: Sequence[str] = ("a", "b", "tie")) -> int:
        marks = ",".join("?" * len(choices))
        return int(
            self.connect()
            .execute(
                "SELECT COUNT(*) FROM labels l JOIN items i ON i.id = l.item_id "
                f"WHERE i.queue = ? AND l.choice IN ({marks})",
                (queue, *choices),
            )
            .fetchone()[0]
        )


# ---------------------------------------------------------------------------------------- helpers
def migrate(con: sqlite3.Connection) -> int:
    """Apply the migrations this database lacks (inside the caller's transaction); returns its version."""
    con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = con.execute("SELECT version FROM schema_version").fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise RewardlabError(f"labeling database has schema version {version}; this rewardlab knows up to "
                             f"{SCHEMA_VERSION} (upgrade rewardlab)")  # fmt: skip
    for v in range(version, SCHEMA_VERSION):
        for statement in _MIGRATIONS[v].split(";"):
            if statement.strip():
                con.execute(statement)
    if row is None:
        con.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
    else:
        con.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
    return SCHEMA_VERSION


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise RewardlabError(f"item field {name!r}: expected a string, got {type(value).__name__}")
    return value


def _gold(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RewardlabError(f"item field {name!r}: expected a finite number or null")
    return float(value)


def _images(value: Any, name: str) -> str:
    value = value or []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise RewardlabError(f"item field {name!r}: expected a list of image paths (relative to media_dir)")
    return json.dumps(value)


def _item_row(queue: str, it: dict[str, Any], now: float) -> tuple[Any, ...]:
    unknown = set(it) - {"prompt", "a", "b", "gold_a", "gold_b", "images_a", "images_b", "media_dir", "meta",
                         "wanted"}  # fmt: skip
    if unknown:
        raise RewardlabError(f"item: unknown field(s) {sorted(unknown)}")
    if (it.get("images_a") or it.get("images_b")) and not it.get("media_dir"):
        raise RewardlabError("item: images need 'media_dir' (the folder they are served from)")
    wanted = it.get("wanted", 1)
    if not isinstance(wanted, int) or isinstance(wanted, bool) or wanted < 1:
        raise RewardlabError("item field 'wanted': expected a whole number >= 1")
    meta = it.get("meta") or {}
    if not isinstance(meta, dict):
        raise RewardlabError("item field 'meta': expected an object")
    media = it.get("media_dir")
    return (queue, _text(it.get("prompt"), "prompt"), _text(it.get("a"), "a"), _text(it.get("b"), "b"),
            _gold(it.get("gold_a"), "gold_a"), _gold(it.get("gold_b"), "gold_b"),
            _images(it.get("images_a"), "images_a"), _images(it.get("images_b"), "images_b"),
            str(Path(media).resolve()) if media else None, json.dumps(meta), wanted, now)  # fmt: skip


def _item(row: sqlite3.Row) -> Item:
    return Item(id=int(row["id"]), queue=row["queue"], prompt=row["prompt"], a=row["a"], b=row["b"],
                gold_a=row["gold_a"], gold_b=row["gold_b"], images_a=json.loads(row["images_a"]),
                images_b=json.loads(row["images_b"]), media_dir=row["media_dir"], meta=json.loads(row["meta"]),
                wanted=int(row["wanted"]))  # fmt: skip
