"""The labeling web app (Starlette): one queue, server-rendered pages, a small JSON API.

Pages (a browser signs in once with its token, kept in an HttpOnly, SameSite=Strict cookie):

* ``GET /label``: the prompt and the two responses side by side (or their images), buttons and keys
  (``1``/left arrow: left, ``2``/right arrow: right, ``t`` tie, ``c`` can't tell, ``s`` skip), an optional
  reason, progress and the annotator's own agreement; ``POST /label`` records the answer and redirects
  (post/redirect/get) only after the transaction has committed.
* ``GET /admin``: per-annotator counts, error rate against gold, pairwise Cohen's kappa (admins only).
* ``GET /media/{item}/{side}/{index}``: an item's image, only from inside its media folder.

API (``Authorization: Bearer <token>``): ``GET /api/next``, ``POST /api/label`` (JSON
``{"item_id", "choice", "reason"?, "seconds"?}``), ``GET /api/stats``. Without a valid token: 401.
Model outputs are untrusted: templates autoescape everything, the page runs no inline script and the
Content-Security-Policy allows none.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from rewardlab.feedback.human.db import CHOICES, MAX_REASON, Item, LabelDB, LabelError
from rewardlab.feedback.human.stats import annotator_stats, pairwise_kappa, pooled_kappa

HERE = Path(__file__).resolve().parent
COOKIE = "rl_token"
MAX_BODY = 64 * 1024
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
IMAGE_TYPES = {".png": "image/png", ".gif": "image/gif", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
               ".webp": "image/webp"}  # fmt: skip


def _fmt(x: Any, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:.0f}%" if pct else (f"{x:.2f}" if isinstance(x, float) else str(x))


def create_app(db: LabelDB | Path | str, queue: str, *, lease_s: float = 600.0, title: str = "rewardlab") -> Starlette:  # fmt: skip
    """The app serving ``queue`` of ``db``."""
    store = db if isinstance(db, LabelDB) else LabelDB(db)
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True))
    env.filters["fmt"] = _fmt

    def page(name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        html = env.get_template(name).render(title=title, queue=queue, **ctx)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def error(request: Request, status: int, message: str) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status_code=status, headers=SECURITY_HEADERS)
        return page("error.html", status=status, message=message)

    def who(request: Request) -> tuple[int, str, bool] | None:
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else request.cookies.get(COOKIE)
        return store.authenticate(token)

    def unauthorized(request: Request) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": "missing or invalid token"}, status_code=401,
                                headers={**SECURITY_HEADERS, "WWW-Authenticate": "Bearer"})  # fmt: skip
        return page("login.html", status=401, message="Sign in with your annotator token.")

    async def body(request: Request) -> bytes:
        data = await request.body()
        if len(data) > MAX_BODY:
            raise LabelError(413, f"request body over {MAX_BODY} bytes")
        return data

    def own_stats(name: str) -> dict[str, Any]:
        rows = [r for r in annotator_stats(store.labels(queue)) if r["annotator"] == name]
        return rows[0] if rows else {}

    def item_view(it: Item) -> dict[str, Any]:
        return {"id": it.id, "prompt": it.prompt, "a": it.a, "b": it.b,
                "images_a": [f"/media/{it.id}/a/{i}" for i in range(len(it.images_a))],
                "images_b": [f"/media/{it.id}/b/{i}" for i in range(len(it.images_b))]}  # fmt: skip

    # ------------------------------------------------------------------ pages
    async def index(request: Request) -> Response:
        return RedirectResponse("/label", status_code=303)

    async def login(request: Request) -> Response:
        if request.method == "GET":
            return page("login.html", message="Sign in with your annotator token.")
        form = parse_qs((await body(request)).decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0].strip()
        if store.authenticate(token) is None:
            return page("login.html", status=401, message="That token is not valid.")
        resp = RedirectResponse("/label", status_code=303)
        resp.set_cookie(COOKIE, token, httponly=True, samesite="strict", max_age=30 * 86400)
        return resp

    async def logout(request: Request) -> Response:
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(COOKIE)
        return resp

    async def label_page(request: Request) -> Response:
        user = who(request)
        if user is None:
            return unauthorized(request)
        if request.method == "POST":
            form = parse_qs((await body(request)).decode("utf-8", "replace"), keep_blank_values=True)
            item_id, choice = _int((form.get("item_id") or [""])[0]), (form.get("choice") or [""])[0]
            if item_id is None:
                raise LabelError(400, "item_id: expected a whole number")
            store.submit(item_id, user[0], choice, (form.get("reason") or [""])[0].strip() or None)
            return RedirectResponse("/label", status_code=303)
        it = store.next_item(queue, user[0], lease_s)
        return page("label.html", user=user[1], admin=user[2], item=item_view(it) if it else None,
                    progress=store.progress(queue, user[0]), stats=own_stats(user[1]), max_reason=MAX_REASON)  # fmt: skip

    async def admin_page(request: Request) -> Response:
        user = who(request)
        if user is None:
            return unauthorized(request)
        if not user[2]:
            raise LabelError(
                403, "the admin page is for admin annotators (rewardlab label add-annotator --admin)"
            )
        labels = store.labels(queue)
        return page("admin.html", user=user[1], admin=True, progress=store.progress(queue),
                    rows=annotator_stats(labels), pairs=pairwise_kappa(labels), pooled=pooled_kappa(labels))  # fmt: skip

    async def media(request: Request) -> Response:
        if who(request) is None:
            return unauthorized(request)
        p = request.path_params
        it = store.item(p["item_id"])
        if it is None or it.queue != queue or p["side"] not in ("a", "b"):
            raise LabelError(404, "no such image")
        names = it.images_a if p["side"] == "a" else it.images_b
        path = safe_media_path(it.media_dir, names[p["index"]] if p["index"] < len(names) else None)
        if path is None:
            raise LabelError(404, "no such image")
        return FileResponse(path, media_type=IMAGE_TYPES[path.suffix.lower()], headers=SECURITY_HEADERS)

    # ------------------------------------------------------------------ API
    async def api_next(request: Request) -> Response:
        user = who(request)
        if user is None:
            return unauthorized(request)
        it = store.next_item(queue, user[0], lease_s)
        return JSONResponse({"item": item_view(it) if it else None, "progress": store.progress(queue, user[0])},
                            headers=SECURITY_HEADERS)  # fmt: skip

    async def api_label(request: Request) -> Response:
        user = who(request)
        if user is None:
            return unauthorized(request)
        try:
            data = json.loads(await body(request))
        except (ValueError, UnicodeDecodeError):
            raise LabelError(400, "body: expected a JSON object") from None
        if not isinstance(data, dict):
            raise LabelError(400, "body: expected a JSON object")
        unknown = set(data) - {"item_id", "choice", "reason", "seconds"}
        if unknown:
            raise LabelError(400, f"unknown field(s) {sorted(unknown)}")
        item_id, choice, reason, seconds = (data.get(k) for k in ("item_id", "choice", "reason", "seconds"))
        if not isinstance(item_id, int) or isinstance(item_id, bool) or not 0 <= item_id < 2**63:
            raise LabelError(400, "item_id: expected a whole number")
        if not isinstance(choice, str):
            raise LabelError(400, f"choice: expected one of {', '.join(CHOICES)}")
        if reason is not None and not isinstance(reason, str):
            raise LabelError(400, "reason: expected a string or null")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int | float)):
            raise LabelError(400, "seconds: expected a number or null")
        label_id = store.submit(item_id, user[0], choice, reason, None if seconds is None else float(seconds))
        return JSONResponse({"ok": True, "label_id": label_id}, headers=SECURITY_HEADERS)

    async def api_stats(request: Request) -> Response:
        user = who(request)
        if user is None:
            return unauthorized(request)
        return JSONResponse({"progress": store.progress(queue, user[0]), "stats": _json_safe(own_stats(user[1]))},
                            headers=SECURITY_HEADERS)  # fmt: skip

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True, "queue": queue})

    async def on_label_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LabelError)
        return error(request, exc.status, str(exc))

    async def on_not_found(request: Request, exc: Exception) -> Response:
        return error(request, getattr(exc, "status_code", 404), "not found")

    routes = [
        Route("/", index),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/label", label_page, methods=["GET", "POST"]),
        Route("/admin", admin_page),
        Route("/media/{item_id:int}/{side}/{index:int}", media),
        Route("/api/next", api_next),
        Route("/api/label", api_label, methods=["POST"]),
        Route("/api/stats", api_stats),
        Route("/healthz", healthz),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={LabelError: on_label_error, 404: on_not_found,
                                                       405: on_not_found})  # fmt: skip
    app.state.db = store
    return app


def safe_media_path(media_dir: str | None, name: str | None) -> Path | None:
    """``media_dir/name`` if it is an existing image file inside ``media_dir`` (no ``..``, no absolute path,
    no symlink out of it); else ``None``."""
    if not media_dir or not name:
        return None
    root = Path(media_dir).resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root) or not path.is_file() or path.suffix.lower() not in IMAGE_TYPES:
        return None
    return path


def _int(text: str) -> int | None:
    return int(text) if text.isdigit() and len(text) < 19 else None


def _json_safe(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}
