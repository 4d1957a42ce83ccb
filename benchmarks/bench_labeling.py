"""Load and crash benchmark of the labeling app, over real HTTP on loopback.

Simulated annotators (one thread and one keep-alive connection each) ask ``GET /api/next`` and answer
``POST /api/label`` until the queue is empty, against one ``rewardlab label serve`` process. Afterwards
every label the server acknowledged (HTTP 200) must be in the export exactly once.

With ``--crash`` the server is killed with SIGKILL once ``--crash-at`` of the labels are acknowledged,
restarted on the same port and database, and the annotators carry on (retrying what was not
acknowledged); then no acknowledged label may be missing and ``PRAGMA integrity_check`` must say ok.

    python benchmarks/bench_labeling.py                      # 20 annotators, 2,000 labels
    python benchmarks/bench_labeling.py --crash              # the same, killed with SIGKILL at 40%
    python benchmarks/bench_labeling.py --annotators 5 --labels 200 --crash

Latency is per acknowledged ``POST /api/label`` (the commit included); labels/s is acknowledged labels
over the wall time from the first request to the last answer (a crash's restart included).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

from rewardlab.feedback.human.db import LabelDB
from rewardlab.feedback.human.server import create_app
from rewardlab.feedback.human.stats import to_comparisons

QUEUE = "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``rewardlab label serve`` in a subprocess on 127.0.0.1:``port``."""

    def __init__(self, db: Path, queue: str, port: int, lease_s: float = 60.0) -> None:
        self.db, self.queue, self.port, self.lease_s = db, queue, port, lease_s
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> Server:
        cmd = [sys.executable, "-m", "rewardlab.cli", "label", "serve", "--db", str(self.db), "--queue",
               self.queue, "--port", str(self.port), "--lease-s", str(self.lease_s)]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"server exited with {self.proc.returncode}: {err[-2000:]}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", "/healthz")
                if c.getresponse().status == 200:
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"server did not answer on port {self.port} within {timeout:g} s")

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ForkServer(Server):
    """The same server in a forked child of this process (no interpreter start, no imports: fast to restart);
    :meth:`kill` still sends SIGKILL to a separate process. POSIX only."""

    def start(self, timeout: float = 60.0) -> Server:
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        self.child = ctx.Process(
            target=_serve, args=(self.db, self.queue, self.port, self.lease_s), daemon=True
        )
        self.child.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.child.is_alive():
                raise RuntimeError(f"forked server exited with {self.child.exitcode}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", "/healthz")
                if c.getresponse().status == 200:
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"forked server did not answer on port {self.port} within {timeout:g} s")

    def kill(self) -> None:
        if self.child.is_alive():
            os.kill(self.child.pid, signal.SIGKILL)  # type: ignore[arg-type]
            self.child.join()

    def stop(self) -> None:
        if self.child.is_alive():
            self.child.terminate()
            self.child.join(10)


def _serve(db: Path, queue: str, port: int, lease_s: float) -> None:
    uvicorn.run(create_app(db, queue, lease_s=lease_s), host="127.0.0.1", port=port, log_level="warning")


class ThreadServer:
    """uvicorn serving the app in a thread of this process, on a free loopback port."""

    def __init__(self, db: Path, queue: str) -> None:
        self.port = free_port()
        config = uvicorn.Config(create_app(db, queue), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.server.started
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def make_db(path: Path, n_labels: int, n_annotators: int, queue: str = QUEUE, seed: int = 0) -> list[str]:
    """A database with ``n_labels`` single-label items and ``n_annotators`` annotators; their tokens."""
    rng = random.Random(seed)
    db = LabelDB(path)
    items = []
    for i in range(n_labels):
        x, y = rng.randint(1, 99), rng.randint(1, 99)
        items.append({"prompt": f"what is {x} + {y} ?", "a": f"{x + y}", "b": f"{x + y + rng.randint(1, 9)}",
                      "gold_a": 1.0, "gold_b": 0.0, "meta": {"n": i}})  # fmt: skip
    db.add_items(queue, items)
    tokens = [db.add_annotator(f"sim{i:02d}") for i in range(n_annotators)]
    db.close()
    return tokens


@dataclass
class Results:
    acked: list[tuple[int, str, str]] = field(default_factory=list)  # (item id, annotator token, choice)
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    conflicts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def annotator(
    port: int, token: str, results: Results, seed: int, deadline: float, p_correct: float = 0.8
) -> None:
    """Label until the queue is empty: next, answer, repeat; reconnect (and retry) after a connection error."""
    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    conn: http.client.HTTPConnection | None = None
    while time.monotonic() < deadline:
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/api/next", headers=headers)
            r = conn.getresponse()
            raw = r.read()
            if r.status != 200:
                raise RuntimeError(f"/api/next: {r.status} {raw[:200]!r}")
            body = json.loads(raw)
            item = body["item"]
            if item is None:
                return
            choice = "a" if rng.random() < p_correct else "b"
            payload = json.dumps({"item_id": item["id"], "choice": choice, "seconds": rng.uniform(1, 9)})
            t0 = time.perf_counter()
            conn.request("POST", "/api/label", body=payload, headers=headers)
            r = conn.getresponse()
            r.read()
            dt = time.perf_counter() - t0
            with results.lock:
                if r.status == 200:
                    results.acked.append((item["id"], token, choice))
                    results.latencies.append(dt)
                elif r.status == 409:
                    results.conflicts += 1
                else:
                    raise RuntimeError(f"/api/label: {r.status}")
        except (OSError, http.client.HTTPException):
            with results.lock:
                results.errors += 1
            if conn is not None:
                conn.close()
            conn = None
            time.sleep(0.2)
    raise TimeoutError("annotator did not finish before the deadline")


def run_load(
    port: int, tokens: list[str], results: Results, timeout: float = 600.0
) -> list[threading.Thread]:
    deadline = time.monotonic() + timeout
    threads = [threading.Thread(target=annotator, args=(port, t, results, i, deadline), daemon=True)
               for i, t in enumerate(tokens)]  # fmt: skip
    for t in threads:
        t.start()
    return threads


def check(db_path: Path, results: Results, tokens: list[str], queue: str = QUEUE) -> dict[str, Any]:
    """Every acknowledged label is in the export exactly once; the database is intact."""
    db = LabelDB(db_path)
    names = {t: name for t, name in zip(tokens, [f"sim{i:02d}" for i in range(len(tokens))], strict=True)}
    exported = to_comparisons(db.labels(queue))
    keys = [(c.meta["item_id"], c.meta["annotator"]) for c in exported]
    counts: dict[tuple[int, str], int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    acked = [(i, names[t]) for i, t, _ in results.acked]
    missing = [k for k in acked if counts.get(k, 0) == 0]
    duplicated = [k for k, n in counts.items() if n > 1]
    out = {"acknowledged": len(acked), "exported": len(exported), "missing": len(missing),
           "duplicated": len(duplicated), "integrity": db.integrity_check()}  # fmt: skip
    db.close()
    return out


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))] if s else float("nan")


def bench(workdir: Path, n_annotators: int = 20, n_labels: int = 2000, crash: bool = False,
          crash_at: float = 0.4, server: type[Server] = Server) -> dict[str, Any]:  # fmt: skip
    """One load (or crash) run in ``workdir``; returns the measurements and the checks. ``server``: a
    ``rewardlab label serve`` subprocess (:class:`Server`), or a forked child (:class:`ForkServer`)."""
    server_cls = server
    db_path = workdir / "bench.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    tokens = make_db(db_path, n_labels, n_annotators)
    port = free_port()
    srv = server_cls(db_path, QUEUE, port).start()
    results = Results()
    restarts = 0
    t0 = time.perf_counter()
    try:
        threads = run_load(port, tokens, results)
        if crash:
            while len(results.acked) < crash_at * n_labels and any(t.is_alive() for t in threads):
                time.sleep(0.01)
            srv.kill()
            acked_at_kill = len(results.acked)
            time.sleep(0.5)
            srv = server_cls(db_path, QUEUE, port).start()
            restarts = 1
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    finally:
        srv.stop()
    out = {
        "annotators": n_annotators,
        "labels": n_labels,
        "wall_s": round(wall, 2),
        "labels_per_s": round(len(results.acked) / wall, 1),
        "p50_ms": round(1000 * percentile(results.latencies, 0.5), 2),
        "p99_ms": round(1000 * percentile(results.latencies, 0.99), 2),
        "connection_errors": results.errors,
        "conflicts_409": results.conflicts,
        "restarts": restarts,
        **check(db_path, results, tokens),
    }
    if crash:
        out["acknowledged_at_kill"] = acked_at_kill
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--annotators", type=int, default=20)
    ap.add_argument("--labels", type=int, default=2000)
    ap.add_argument(
        "--crash", action="store_true", help="SIGKILL the server during the load, then restart it"
    )
    ap.add_argument(
        "--crash-at", type=float, default=0.4, help="share of labels acknowledged before the kill"
    )
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/rewardlab-bench-labeling"))
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    out = bench(args.workdir, args.annotators, args.labels, crash=args.crash, crash_at=args.crash_at)
    print(json.dumps(out, indent=2))
    ok = out["missing"] == 0 and out["duplicated"] == 0 and out["integrity"] == "ok"
    ok = ok and out["exported"] == out["acknowledged"] if not args.crash else ok
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
