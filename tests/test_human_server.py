"""The labeling app's handlers (Starlette's TestClient): tokens, leases, escaping, file routes, bad requests."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from rewardlab.feedback.human.db import LabelDB
from rewardlab.feedback.human.server import MAX_BODY, create_app, safe_media_path

EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def png(path: Path, w: int = 4, h: int = 3, rgb: tuple[int, int, int] = (200, 30, 30)) -> Path:
    """A real ``w`` x ``h`` RGB PNG (stdlib only)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes(rgb) * w for _ in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return path


@pytest.fixture
def setup(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    png(media / "left.png")
    png(media / "right.png", rgb=(30, 30, 200))
    (tmp_path / "secret.png").write_bytes(b"secret")
    (media / "link.png").symlink_to(tmp_path / "secret.png")
    db = LabelDB(tmp_path / "l.sqlite")
    db.add_items("q", [
        {"prompt": f"say hi {EVIL}", "a": EVIL, "b": "<b>bold</b> & co", "gold_a": 0.0, "gold_b": 1.0},
        {"prompt": "clip", "a": "", "b": "", "images_a": ["left.png"], "images_b": ["right.png"],
         "media_dir": str(media)},
        {"prompt": "escape", "a": "x", "b": "y", "images_a": ["../secret.png", "link.png", "/etc/passwd"],
         "media_dir": str(media)},
    ])  # fmt: skip
    db.add_items("other", [{"prompt": "p", "a": "x", "b": "y"}])
    tokens = {n: db.add_annotator(n, admin=n == "admin") for n in ("alice", "bob", "admin")}
    return TestClient(create_app(db, "q", lease_s=60)), tokens, db


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_missing_or_invalid_token_is_401_everywhere(setup):
    client, tokens, _ = setup
    for token in (None, "", "garbage", tokens["alice"] + "x", "2." + tokens["alice"].split(".", 1)[1]):
        h = auth(token) if token is not None else {}
        for method, url in (("GET", "/label"), ("GET", "/api/next"), ("GET", "/api/stats"), ("GET", "/admin"),
                            ("GET", "/media/2/a/0"), ("POST", "/api/label"), ("POST", "/label")):  # fmt: skip
            r = client.request(method, url, headers=h, json={"item_id": 1, "choice": "a"})
            assert r.status_code == 401, (token, url)
    client.cookies.set("rl_token", "nope")
    assert client.get("/label").status_code == 401
    assert client.post("/login", data={"token": "nope"}).status_code == 401


def test_login_sets_an_httponly_strict_cookie(setup):
    client, tokens, _ = setup
    r = client.post("/login", data={"token": tokens["alice"]}, follow_redirects=False)
    assert r.status_code == 303
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert client.get("/label").status_code == 200


def test_model_text_is_escaped_and_no_inline_script_may_run(setup):
    client, tokens, _ = setup
    r = client.get("/label", headers=auth(tokens["alice"]))
    assert r.status_code == 200
    assert "<script>alert" not in r.text and "onerror=alert(1)>" not in r.text and "<b>bold" not in r.text
    assert (
        "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in r.text
        and "&lt;b&gt;bold&lt;/b&gt; &amp; co" in r.text
    )
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    data = client.get("/api/next", headers=auth(tokens["alice"])).json()
    assert data["item"]["a"] == EVIL  # the API returns the text as data, JSON-encoded


def test_another_annotators_lease_and_double_submission_are_409(setup):
    client, tokens, db = setup
    a, b = auth(tokens["alice"]), auth(tokens["bob"])
    mine = client.get("/api/next", headers=a).json()["item"]["id"]
    theirs = client.get("/api/next", headers=b).json()["item"]["id"]
    assert mine != theirs
    r = client.post("/api/label", headers=b, json={"item_id": mine, "choice": "a"})
    assert r.status_code == 409 and "another annotator" in r.json()["error"]
    r = client.post("/label", headers=b, data={"item_id": str(mine), "choice": "a"})
    assert r.status_code == 409 and "another annotator" in r.text
    assert client.post("/api/label", headers=a, json={"item_id": mine, "choice": "b", "reason": "x"}).json()[
        "ok"
    ]
    r = client.post("/api/label", headers=a, json={"item_id": mine, "choice": "a"})
    assert r.status_code == 409 and "double submission" in r.json()["error"]
    assert [(lab.annotator, lab.choice) for lab in db.labels("q")] == [("alice", "b")]


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        (b"not json", 400, "JSON object"),
        (b"[1, 2]", 400, "JSON object"),
        (json.dumps({"item_id": "1", "choice": "a"}).encode(), 400, "item_id"),
        (json.dumps({"item_id": 10**30, "choice": "a"}).encode(), 400, "item_id"),
        (json.dumps({"item_id": 1, "choice": 3}).encode(), 400, "choice"),
        (json.dumps({"item_id": 1, "choice": "a", "extra": 1}).encode(), 400, "unknown field"),
        (json.dumps({"item_id": 1, "choice": "a", "reason": 5}).encode(), 400, "reason"),
        (json.dumps({"item_id": 1, "choice": "a", "seconds": "5"}).encode(), 400, "seconds"),
        (json.dumps({"item_id": 999, "choice": "a"}).encode(), 404, "no such item"),
        (json.dumps({"item_id": 1, "choice": "left"}).encode(), 422, "choice"),
        (json.dumps({"item_id": 1, "choice": "a", "reason": "r" * 3000}).encode(), 422, "reason"),
        (json.dumps({"item_id": 1, "choice": "a", "seconds": -1}).encode(), 422, "seconds"),
        (b"x" * (MAX_BODY + 1), 413, "bytes"),
    ],
)
def test_malformed_requests_get_clear_4xx(setup, body, status, text):
    client, tokens, db = setup
    r = client.post(
        "/api/label", headers={**auth(tokens["alice"]), "Content-Type": "application/json"}, content=body
    )
    assert r.status_code == status and text in r.json()["error"]
    assert db.labels("q") == []


def test_form_errors_and_unknown_routes(setup):
    client, tokens, _ = setup
    h = auth(tokens["alice"])
    assert client.post("/label", headers=h, data={"item_id": "abc", "choice": "a"}).status_code == 400
    assert client.post("/label", headers=h, data={"item_id": "7", "choice": "a"}).status_code == 404
    assert client.get("/nope", headers=h).status_code == 404
    assert client.delete("/api/label", headers=h).status_code == 405


def test_images_are_served_and_path_traversal_is_refused(setup):
    client, tokens, db = setup
    h = auth(tokens["alice"])
    r = client.get("/media/2/a/0", headers=h)
    assert (
        r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content.startswith(b"\x89PNG")
    )
    assert client.get("/media/2/b/0", headers=h).content != r.content
    for url in ("/media/3/a/0", "/media/3/a/1", "/media/3/a/2", "/media/2/a/5", "/media/2/c/0", "/media/4/a/0",
                "/media/1/a/0", f"/media/{10**30}/a/0", "/media/2/a/..%2f..%2fsecret.png", "/static/..%2f..%2fdb.py",
                "/static/../db.py", "/static/%2e%2e/server.py"):  # fmt: skip
        r = client.get(url, headers=h)
        assert r.status_code in (404, 405) and b"secret" not in r.content, url
    assert client.get("/static/app.js").status_code == 200
    assert safe_media_path(str(Path(db.path).parent / "media"), "../secret.png") is None
    html = client.get("/label", headers=h).text  # item 1 first; answer it to reach the clip
    client.post("/api/label", headers=h, json={"item_id": 1, "choice": "a"})
    html = client.get("/label", headers=h).text
    assert 'src="/media/2/a/0"' in html and 'src="/media/2/b/0"' in html


def test_admin_page_is_for_admins_and_shows_agreement(tmp_path):
    db = LabelDB(tmp_path / "k.sqlite")
    db.add_items("q", [{"prompt": f"p{i}", "a": "x", "b": "y", "gold_a": 1.0, "gold_b": 0.0, "wanted": 2}
                       for i in range(3)])  # fmt: skip
    tokens = {n: db.add_annotator(n, admin=n == "admin") for n in ("ann1", "ann2", "admin")}
    client = TestClient(create_app(db, "q"))
    for name, answers in (("ann1", "aab"), ("ann2", "aba")):
        for choice in answers:
            item = client.get("/api/next", headers=auth(tokens[name])).json()["item"]
            assert client.post("/api/label", headers=auth(tokens[name]), json={"item_id": item["id"], "choice": choice}).status_code == 200  # fmt: skip
    assert client.get("/admin", headers=auth(tokens["ann1"])).status_code == 403
    page = client.get("/admin", headers=auth(tokens["admin"])).text
    assert "ann1" in page and "ann2" in page and 'id="pooled-kappa">-0.50<' in page  # p_o 1/3, p_e 5/9
    stats = client.get("/api/stats", headers=auth(tokens["ann1"])).json()
    assert stats["progress"]["mine"] == 3 and stats["stats"]["gold_error_rate"] == pytest.approx(1 / 3)
