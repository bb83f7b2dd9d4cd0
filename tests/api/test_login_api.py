"""Login and password change over real HTTP (api/login.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from .conftest import make_config
from .live import LiveServer, Reply

NEW = "aTIfaSHA"


@pytest.fixture()
def daemon(models, tmp_path) -> Iterator[LiveServer]:
    live = LiveServer(make_config(tmp_path / "daemon"), models).start()
    yield live
    live.stop()


def login(server: LiveServer, username: object, password: object) -> Reply:
    return server.post("login", {"username": username, "password": password})


def change(server: LiveServer, old: object, new: object, username: object = "admin") -> Reply:
    return server.post("changepassword", {"username": username, "old_password": old,
                                          "new_password": new})


def store_bytes(server: LiveServer) -> bytes:
    files = sorted(Path(server._config.data_dir).rglob("*.mdb"))
    assert files, "the LMDB files were not found"
    return b"".join(p.read_bytes() for p in files)


def test_default_credentials(daemon) -> None:
    reply = login(daemon, "admin", "admin")
    assert reply.status == 200 and reply.json == {"result": True}
    assert reply.body == b'{"result":true}'


@pytest.mark.parametrize("username, password", [
    ("admin", "wrong"), ("root", "admin"), ("Admin", "admin"), ("admin", "ADMIN"),
    ("admin ", "admin"), ("admin", "admin "), ("", ""), ("admin", ""), ("\ud800", "admin"),
    ("admin", "\ud800"), ("admin", "x" * 100000),
])
def test_wrong_user_or_password_is_one_error(daemon, username, password) -> None:
    reply = login(daemon, username, password)
    assert reply.status == 401
    assert reply.error == ("PASSWORD_ERROR", "password error")


def test_login_validation_order(daemon) -> None:
    """login.md: presence then type of username, then of password."""
    assert daemon.post("login", {}).error == ("MISSING_ARGUMENTS", "username")
    assert daemon.post("login", {"password": 5}).error == ("MISSING_ARGUMENTS", "username")
    assert daemon.post("login", {"username": None, "password": "admin"}).error == \
        ("MISSING_ARGUMENTS", "username")
    assert daemon.post("login", {"username": 1}).error == ("INVALID_ARGUMENTS", "username: 1")
    assert daemon.post("login", {"username": ["admin"], "password": 5}).error == \
        ("INVALID_ARGUMENTS", 'username: ["admin"]')
    assert daemon.post("login", {"username": "admin"}).error == ("MISSING_ARGUMENTS", "password")
    assert daemon.post("login", {"username": "root"}).error == ("MISSING_ARGUMENTS", "password")
    for bad in (123, True, ["admin"], {"p": "admin"}):
        assert login(daemon, "admin", bad).error == ("INVALID_ARGUMENTS", "password: <redacted>")
    assert daemon.request("POST", "/sophon/v2/face/login", b"").error == \
        ("EMPTY_REQUEST_JSON", "empty request body")
    assert daemon.post("login", {"username": "admin", "password": "admin", "extra": 1}).status == 200


def test_changepassword_validation_order(daemon) -> None:
    assert daemon.post("changepassword", {}).error == ("MISSING_ARGUMENTS", "username")
    assert daemon.post("changepassword", {"username": "admin"}).error == \
        ("MISSING_ARGUMENTS", "old_password")
    assert daemon.post("changepassword", {"username": "admin", "old_password": "admin"}).error == \
        ("MISSING_ARGUMENTS", "new_password")
    assert change(daemon, "admin", NEW, username=7).error == ("INVALID_ARGUMENTS", "username: 7")
    assert change(daemon, 7, NEW).error == ("INVALID_ARGUMENTS", "old_password: <redacted>")
    for bad in (7, "", "x" * 129, None):
        expected = ("MISSING_ARGUMENTS", "new_password") if bad is None else \
            ("INVALID_ARGUMENTS", "new_password: <redacted>")
        assert change(daemon, "admin", bad).error == expected
    # Value checks come before the credentials: a bad new password with a wrong old one.
    assert change(daemon, "wrong", "").error == ("INVALID_ARGUMENTS", "new_password: <redacted>")
    assert change(daemon, "wrong", NEW).error == ("PASSWORD_ERROR", "password error")
    assert change(daemon, "admin", NEW, username="root").error == ("PASSWORD_ERROR", "password error")
    assert login(daemon, "admin", "admin").status == 200  # nothing changed


def test_change_and_login_again_and_persist(models, tmp_path) -> None:
    config = make_config(tmp_path / "daemon")
    server = LiveServer(config, models).start()
    try:
        reply = change(server, "admin", NEW)
        assert reply.status == 200 and reply.json == {"result": True}
        assert login(server, "admin", "admin").error == ("PASSWORD_ERROR", "password error")
        assert login(server, "admin", NEW).json == {"result": True}
        assert change(server, "admin", "other").error == ("PASSWORD_ERROR", "password error")
        # 1 and 128 characters are the limits; any characters.
        assert change(server, NEW, "x" * 128).status == 200
        assert change(server, "x" * 128, "密").status == 200
        assert login(server, "admin", "密").status == 200
        assert change(server, "密", NEW).status == 200
        # wipedata, even all, keeps the password (R41).
        assert server.post("wipedata", {"all": True}).status == 200
        assert login(server, "admin", NEW).status == 200
    finally:
        server.stop()
    again = LiveServer(config, models).start()
    try:
        assert login(again, "admin", NEW).json == {"result": True}
        assert login(again, "admin", "admin").status == 401
    finally:
        again.stop()


def test_password_never_leaves_or_lands_in_clear(daemon) -> None:
    secret = "Sup3r-Secret-Pa55phrase"
    replies = [
        change(daemon, "admin", secret),
        change(daemon, secret, secret + "x" * 200),   # too long: redacted
        login(daemon, "admin", secret + "-wrong"),
        login(daemon, "root", secret),
        daemon.post("login", {"username": "admin", "password": [secret]}),
        change(daemon, [secret], "x"),
        login(daemon, "admin", secret),
    ]
    assert [r.status for r in replies] == [200, 400, 401, 401, 400, 400, 200]
    for reply in replies:
        assert secret.encode() not in reply.body
    # Only a salted hash is stored: the password's bytes are nowhere in the store.
    data = store_bytes(daemon)
    assert b"scrypt" in data  # the record is there (the check above is not vacuous)
    assert secret.encode() not in data and secret.encode("utf-16-le") not in data
