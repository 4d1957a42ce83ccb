"""``rewardlab label serve | enqueue | add-annotator | export``: the labeling app's commands.

``rewardlab label [CONFIG]`` stays the label stage: the CLI sends ``rewardlab label <word> ...`` here only
when ``<word>`` is one of :data:`COMMANDS`. ``enqueue`` from a run samples policies and scores them with
the reward model, so its recipe lives in :mod:`rewardlab.pipelines.enqueue`; ``enqueue ITEMS.jsonl`` (items
made elsewhere, e.g. trajectory clips as images) is handled here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from rewardlab.feedback.human.config import QUEUE_PATTERN
from rewardlab.feedback.human.db import LabelDB
from rewardlab.feedback.human.stats import to_comparisons
from rewardlab.feedback.records import save_comparisons
from rewardlab.utils import RewardlabError, read_jsonl_numbered

COMMANDS = ("serve", "enqueue", "add-annotator", "export")
DEFAULT_DB = "labels.sqlite"


def _db_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", type=Path, default=Path(os.environ.get("REWARDLAB_LABEL_DB", DEFAULT_DB)),
                   help="the labeling database (default: $REWARDLAB_LABEL_DB or ./labels.sqlite)")  # fmt: skip


def _queue(text: str) -> str:
    import re

    if not re.fullmatch(QUEUE_PATTERN, text):
        raise argparse.ArgumentTypeError(f"{text!r}: a queue name is 1-64 letters, digits, '.', '_' or '-'")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rewardlab label",
        description="The labeling app: people compare pairs in a browser; `rewardlab label CONFIG` (label.source: "
        "human) reads their answers. See docs/human-labeling.md.",
    )
    sub = parser.add_subparsers(dest="label_command", required=True, metavar="COMMAND")
    s = sub.add_parser("serve", help="serve a queue's labeling page (127.0.0.1 by default)")
    _db_arg(s)
    s.add_argument("--queue", type=_queue, default="default", help="the queue to label (default: default)")
    s.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, this machine only)"
    )
    s.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    s.add_argument("--lease-s", type=float, default=600.0,
                   help="seconds an item stays with the annotator it is shown to before it is re-offered")  # fmt: skip
    e = sub.add_parser(
        "enqueue", help="add pairs to a queue: sampled from a run's policy, or from an items JSONL"
    )
    e.add_argument("source", type=Path, help="a run folder (policy samples) or an items .jsonl file")
    _db_arg(e)
    e.add_argument("--queue", type=_queue, default="default", help="queue name (default: default)")
    e.add_argument("--n", type=int, default=100, help="pairs to enqueue from a run (default: 100)")
    e.add_argument("--select", choices=("disagreement", "random"), default="disagreement",
                   help="from a run: the pairs the reward-model ensemble disagrees on most, or random pairs")  # fmt: skip
    e.add_argument("--candidates", type=int, default=None,
                   help="from a run: pairs sampled to choose from (default: 4 x --n)")  # fmt: skip
    e.add_argument(
        "--arm", default=None, help="from a run: the arm whose reward model scores (default: the first)"
    )
    e.add_argument(
        "--policy", type=Path, default=None, help="from a run: the policy sampled (default: <run>/sft/model)"
    )
    e.add_argument("--overlap", type=float, default=0.0,
                   help="share of items labeled by two annotators, for inter-annotator agreement (default: 0)")  # fmt: skip
    e.add_argument("--seed", type=int, default=0, help="seed of the prompts, samples and overlap draw")
    e.add_argument("--quiet", action="store_true", help="no progress output")
    a = sub.add_parser("add-annotator", help="create an annotator and print their token (stored hashed)")
    a.add_argument("name", help="annotator name (letters, digits, '.', '_', '-')")
    _db_arg(a)
    a.add_argument("--admin", action="store_true", help="may open the admin page (agreement statistics)")
    x = sub.add_parser("export", help="write a queue's answers as comparison JSONL (TRL's preference format)")
    _db_arg(x)
    x.add_argument("--queue", type=_queue, default="default", help="queue name (default: default)")
    x.add_argument("--out", type=Path, default=None, help="output JSONL (default: stdout)")
    return parser


def run_command(args: argparse.Namespace) -> int:
    """Run ``serve``, ``add-annotator``, ``export`` or ``enqueue ITEMS.jsonl``."""
    cmd = args.label_command
    if cmd == "add-annotator":
        token = LabelDB(args.db).add_annotator(args.name, admin=args.admin)
        print(f"annotator {args.name} added to {args.db}; their token (shown once):", file=sys.stderr)
        print(token)
        return 0
    if cmd == "export":
        return export(args.db, args.queue, args.out)
    if cmd == "enqueue":
        n = enqueue_file(args.db, args.queue, args.source, overlap=args.overlap, seed=args.seed)
        print(f"{n} items added to queue {args.queue} of {args.db}", file=sys.stderr)
        return 0
    if cmd == "serve":
        serve(args.db, args.queue, host=args.host, port=args.port, lease_s=args.lease_s)
        return 0
    raise RewardlabError(f"rewardlab label {cmd}: unknown command")


def export(db: Path, queue: str, out: Path | None) -> int:
    """Every left / right / tie answer of ``queue`` as comparison JSONL (``out``, or stdout)."""
    if not Path(db).is_file():
        raise RewardlabError(f"--db: {db} does not exist")
    comps = to_comparisons(LabelDB(db).labels(queue))
    if out is not None:
        save_comparisons(out, comps)
        print(f"{len(comps)} comparisons of queue {queue} written to {out}", file=sys.stderr)
    else:
        for c in comps:
            print(json.dumps(c.to_dict(), ensure_ascii=False))
    return 0


def serve(db: Path, queue: str, *, host: str = "127.0.0.1", port: int = 8000, lease_s: float = 600.0) -> None:
    """Serve ``queue`` with uvicorn until interrupted."""
    import uvicorn

    from rewardlab.feedback.human.server import create_app

    store = LabelDB(db)
    if queue not in store.queues():
        print(f"warning: queue {queue!r} of {db} has no items yet (rewardlab label enqueue)", file=sys.stderr)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: serving on {host}: tokens travel unencrypted unless a TLS proxy fronts it",
            file=sys.stderr,
        )
    print(f"labeling queue {queue} at http://{host}:{port}/label", file=sys.stderr)
    uvicorn.run(create_app(store, queue, lease_s=lease_s), host=host, port=port, log_level="warning")


def read_items(path: Path) -> list[dict[str, Any]]:
    """Items from JSONL: ``prompt``, ``a``, ``b`` and optional ``gold_a``, ``gold_b``, ``images_a``,
    ``images_b`` (paths relative to ``media_dir``, default: the file's folder), ``meta``, ``wanted``."""
    items = []
    for _, row in read_jsonl_numbered(path):
        if not isinstance(row, dict):
            raise RewardlabError(f"{path}: each line must be a JSON object")
        if (row.get("images_a") or row.get("images_b")) and not row.get("media_dir"):
            row = {**row, "media_dir": str(Path(path).resolve().parent)}
        elif row.get("media_dir") and not Path(row["media_dir"]).is_absolute():
            row = {**row, "media_dir": str(Path(path).resolve().parent / row["media_dir"])}
        items.append(row)
    if not items:
        raise RewardlabError(f"{path}: no items")
    return items


def overlap_wanted(n: int, overlap: float, seed: int) -> list[int]:
    """How many annotators should label each of ``n`` items: 2 for a seeded ``overlap`` share, else 1."""
    import random

    if not 0.0 <= overlap <= 1.0:
        raise RewardlabError(f"--overlap {overlap}: expected a share between 0 and 1")
    twice = set(random.Random(seed).sample(range(n), round(n * overlap)))
    return [2 if i in twice else 1 for i in range(n)]


def enqueue_file(db: Path, queue: str, path: Path, *, overlap: float = 0.0, seed: int = 0) -> int:
    items = read_items(path)
    for it, wanted in zip(items, overlap_wanted(len(items), overlap, seed), strict=True):
        it.setdefault("wanted", wanted)
    for it in items:
        for side in ("images_a", "images_b"):
            for name in it.get(side) or []:
                if not isinstance(name, str) or Path(name).is_absolute() or ".." in Path(name).parts:
                    raise RewardlabError(f"{path}: {side} entry {name!r} must be a path inside media_dir")
    return LabelDB(db).add_items(queue, items)
