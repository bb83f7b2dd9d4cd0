"""Runtime settings against a real LMDB in tmp_path: armed-time windows, URL lists, value
coercion, persistence, R35/R37, subscribers, factory reset; and the login hash record."""

from __future__ import annotations

import asyncio
import datetime
import uuid
from typing import Any, Awaitable, Callable, List, Set, TypeVar

import numpy as np
import pytest

from sophon_face.errors import ApiError, ConfigItemFail
from sophon_face.service import login as login_service
from sophon_face.service.login import LoginService
from sophon_face.service.settings import RuntimeSettings, in_window
from sophon_face.service.settings_keys import KEYS, coerce, split_urls
from sophon_face.store import Store, credentials, faces, identities
from sophon_face.store import settings as stored

T = TypeVar("T")


def with_store(tmp_path, body: Callable[[Store], Awaitable[T]]) -> T:
    async def main() -> T:
        store = Store(tmp_path / "data", min_free_bytes=0)
        await store.open()
        try:
            return await body(store)
        finally:
            await store.close()
    return asyncio.run(main())


def at(hms: str) -> datetime.datetime:
    hours, minutes, seconds = (int(p) for p in hms.split(":"))
    return datetime.datetime(2026, 12, 4, hours, minutes, seconds)


# ------------------------------------------------------------------------ armed time

@pytest.mark.parametrize("window, now, inside", [
    ("08:00:00,18:00:00", "08:00:00", True),    # inclusive start
    ("08:00:00,18:00:00", "18:00:00", True),    # inclusive end
    ("08:00:00,18:00:00", "07:59:59", False),
    ("08:00:00,18:00:00", "18:00:01", False),
    ("22:00:00,06:00:00", "23:30:00", True),    # wraps past midnight
    ("22:00:00,06:00:00", "00:00:00", True),
    ("22:00:00,06:00:00", "06:00:00", True),
    ("22:00:00,06:00:00", "06:00:01", False),
    ("22:00:00,06:00:00", "12:00:00", False),
    ("22:00:00,06:00:00", "21:59:59", False),
    ("12:00:00,12:00:00", "12:00:00", True),    # a one-second window
    ("12:00:00,12:00:00", "12:00:01", False),
    ("00:00:00,23:59:59", "23:59:59", True),
])
def test_in_window(window: str, now: str, inside: bool) -> None:
    moment = at(now)
    assert in_window(window, moment.hour * 3600 + moment.minute * 60 + moment.second) is inside


def test_is_armed_follows_the_enabled_windows(tmp_path) -> None:
    async def body(store: Store) -> None:
        settings = RuntimeSettings(store)
        await settings.load()
        # Both switches off: always armed, whatever the windows say.
        await settings.set_configs({"config_dict": {
            "REGN_TIME_PART1": "08:00:00,09:00:00", "REGN_TIME_PART2": "22:00:00,02:00:00"}})
        assert all(settings.is_armed(at(t)) for t in ("00:00:00", "12:00:00", "23:59:59"))
        assert settings.is_armed()  # now, local time
        # Window 1 only.
        await settings.set_configs({"config_dict": {"REGN_TIME_PART1_SWITCH": True}})
        assert settings.is_armed(at("08:30:00"))
        assert not settings.is_armed(at("23:00:00"))  # window 2 is disabled
        # Both windows: either one arms; window 2 wraps past midnight.
        await settings.set_configs({"config_dict": {"REGN_TIME_PART2_SWITCH": "true"}})
        for moment, armed in (("08:30:00", True), ("23:00:00", True), ("01:59:59", True),
                              ("02:00:01", False), ("12:00:00", False)):
            assert settings.is_armed(at(moment)) is armed, moment
        # Window 2 only.
        await settings.set_configs({"config_dict": {"REGN_TIME_PART1_SWITCH": 0}})
        assert not settings.is_armed(at("08:30:00"))
        assert settings.is_armed(at("00:30:00"))
        # The GRAB windows do not arm recognition.
        await settings.set_configs({"config_dict": {
            "REGN_TIME_PART2_SWITCH": False, "GRAB_TIME_PART1_SWITCH": True,
            "GRAB_TIME_PART1": "08:00:00,09:00:00"}})
        assert settings.is_armed(at("12:00:00"))
    with_store(tmp_path, body)


# ------------------------------------------------------------------------ URL lists

@pytest.mark.parametrize("value, urls", [
    ("", []),
    ("http://192.168.0.12:80/test", ["http://192.168.0.12:80/test"]),
    (" http://a/x , https://b:81/y,", ["http://a/x", "https://b:81/y"]),
    (",,http://a/x,, ,", ["http://a/x"]),
])
def test_split_urls(value: str, urls: List[str]) -> None:
    assert split_urls(value) == urls


def test_urls_of_the_live_value(tmp_path) -> None:
    async def body(store: Store) -> None:
        settings = RuntimeSettings(store)
        await settings.load()
        assert settings.urls("HISTORY_EVENT_UPLOAD_URL") == []
        await settings.set_configs({"config_dict": {
            "HISTORY_EVENT_UPLOAD_URL": "http://a:8080/e, HTTPS://b/e,",
            "MEDIA_DEVICE_MONITOR_URL": "https://m/s"}})
        assert settings.urls("HISTORY_EVENT_UPLOAD_URL") == ["http://a:8080/e", "HTTPS://b/e"]
        assert settings.urls("MEDIA_DEVICE_MONITOR_URL") == ["https://m/s"]
    with_store(tmp_path, body)


@pytest.mark.parametrize("value", [
    "ftp://a/x", "http://", "http:// a/x", "a/x", "http://a/x,ftp://b", "http://a/x\nhttp://b",
    "javascript:alert(1)",
])
def test_url_rule_refuses(value: str) -> None:
    with pytest.raises(ValueError):
        coerce("HISTORY_EVENT_UPLOAD_URL", value)


# ------------------------------------------------------------------------ coercion

def test_the_table_has_62_keys_with_valid_defaults() -> None:
    assert len(KEYS) == 62
    for name, key in KEYS.items():
        if not key.readonly:
            assert coerce(name, key.default) == key.default, name


@pytest.mark.parametrize("name, value, expected", [
    ("HISTORY_REPORT_PEROID", "60", 60),
    ("HISTORY_REPORT_PEROID", " 60.0 ", 60),
    ("HISTORY_REPORT_PEROID", 60.0, 60),
    ("HISTORY_REPORT_PEROID", "6e1", 60),
    ("MATCH_THRESHOLD", 75, 75.0),
    ("MATCH_THRESHOLD", "82.5", 82.5),
    ("MATCH_THRESHOLD", "+.5", 0.5),
    ("ALG_ATTRIBUTE_DETECT", "False", False),
    ("ALG_ATTRIBUTE_DETECT", " 1 ", True),
    ("ALG_ATTRIBUTE_DETECT", 1, True),
    ("GATE_INIT", 0, "0"),
    ("GATE_WORK_MODE", "MQ", "mq"),
    ("REGN_POSE_THRESH", "Middle", "middle"),
    ("GATE_EVENT_IMAGE_PATH", "Remote", "remote"),
    ("MQ_EXCHANGE_ARGUMENTS", "", {}),
    ("MQ_PASSWORD", "", ""),
    ("REGN_TIME_PART2", "23:59:59,00:00:00", "23:59:59,00:00:00"),
])
def test_coerce(name: str, value: Any, expected: Any) -> None:
    result = coerce(name, value)
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize("name, value", [
    ("HISTORY_REPORT_PEROID", "1_000"),       # float() would take it
    ("HISTORY_REPORT_PEROID", "١٢"),          # non-ASCII digits
    ("HISTORY_REPORT_PEROID", "1e20"),        # beyond our int bound
    ("HISTORY_REPORT_PEROID", 10 ** 400),     # beyond float range
    ("HISTORY_REPORT_PEROID", 2 ** 31),
    ("HISTORY_REPORT_PEROID", None),
    ("HISTORY_REPORT_PEROID", [5]),
    ("MATCH_THRESHOLD", 10 ** 400),
    ("MATCH_THRESHOLD", "nan"),
    ("MATCH_THRESHOLD", "infinity"),
    ("MATCH_THRESHOLD", float("nan")),
    ("MATCH_THRESHOLD", -0.1),
    ("MATCH_THRESHOLD", True),
    ("MATCH_THRESHOLD", ""),
    ("ALG_ATTRIBUTE_DETECT", "on"),
    ("ALG_ATTRIBUTE_DETECT", None),
    ("GATE_INIT", 2),
    ("GATE_INIT", True),
    ("GATE_INIT", "2"),
    ("MQ_USERNAME", "x" * 4097),
    ("MQ_EXCHANGE_ARGUMENTS", {"x": float("nan")}),
    ("MQ_EXCHANGE_ARGUMENTS", {"x": 2 ** 64}),
    ("MQ_EXCHANGE_ARGUMENTS", "{}"),
    ("REGN_TIME_PART1", "00:00:00,23:59:59\n"),  # a `$` would accept it
    ("REGN_TIME_PART1", "00:00,23:59"),
    ("REGN_TIME_PART1", "00:00:00-23:59:59"),
    ("REGN_TIME_PART1", "00:60:00,01:00:00"),
    ("REGN_TIME_PART1", "00:00:60,01:00:00"),
    ("GATE_STRANGER_GROUP_SIZE", 40000),
])
def test_coerce_refuses(name: str, value: Any) -> None:
    with pytest.raises(ValueError):
        coerce(name, value)


def test_deeply_nested_object_is_refused() -> None:
    value: Any = {}
    for _ in range(40):
        value = {"x": value}
    with pytest.raises(ValueError):
        coerce("MQ_EXCHANGE_ARGUMENTS", value)


# ------------------------------------------------------------------------ service

def test_defaults_overrides_persistence_and_reset(tmp_path) -> None:
    defaults = {"MATCH_THRESHOLD": 70.0, "REGN_MIN_FACE": 60, "GATE_DEFAULT_GROUP_SIZE": 200000}
    seen: List[Set[str]] = []

    async def first(store: Store) -> None:
        settings = RuntimeSettings(store, defaults)
        settings.subscribe(seen.append)
        await settings.load()
        assert settings.value("MATCH_THRESHOLD") == 70.0
        assert settings.value("GATE_DEFAULT_GROUP_SIZE") == 200000
        assert await settings.get_configs({"config_name": "REGN_MIN_FACE"}) == {"REGN_MIN_FACE": 60}
        reply = await settings.set_configs({"config_dict": {
            "MATCH_THRESHOLD": "90", "EVENT_IMAGE_PATH": "REMOTE"}})
        assert reply == {"MATCH_THRESHOLD": 90.0, "EVENT_IMAGE_PATH": "remote"}
        assert seen == [{"MATCH_THRESHOLD", "GATE_EVENT_IMAGE_PATH"}]
        # Only set keys are stored.
        assert await store.read(stored.get_all) == {
            "MATCH_THRESHOLD": 90.0, "GATE_EVENT_IMAGE_PATH": "remote"}

    async def second(store: Store) -> None:
        settings = RuntimeSettings(store, defaults)
        settings.subscribe(seen.append)
        assert settings.value("MATCH_THRESHOLD") == 70.0  # before load: the defaults
        await settings.load()
        assert settings.value("MATCH_THRESHOLD") == 90.0
        assert settings.value("GATE_EVENT_IMAGE_PATH") == "remote"
        # Factory reset (wipedata all): clear in a transaction, then forget in memory.
        await store.write(lambda txn: (stored.clear(txn), []))
        settings.reset_to_defaults()
        assert settings.value("MATCH_THRESHOLD") == 70.0
        assert seen[-1] == set(KEYS)
        assert await store.read(stored.get_all) == {}

    with_store(tmp_path, first)
    with_store(tmp_path, second)


def test_partial_failure_commits_the_valid_keys(tmp_path) -> None:
    async def body(store: Store) -> None:
        settings = RuntimeSettings(store)
        seen: List[Set[str]] = []
        settings.subscribe(seen.append)
        await settings.load()
        with pytest.raises(ConfigItemFail) as caught:
            await settings.set_configs({"config_dict": {
                "NOPE": 1, "HISTORY_REPORT_PEROID": "9", "GATE_PRODUCT_TYPE": "SE5",
                "MATCH_THRESHOLD": 100.5}})
        assert caught.value.message == "NOPE,GATE_PRODUCT_TYPE,MATCH_THRESHOLD"
        assert settings.value("HISTORY_REPORT_PEROID") == 9
        assert await store.read(stored.get_all) == {"HISTORY_REPORT_PEROID": 9}
        assert seen == [{"HISTORY_REPORT_PEROID"}]
        # Nothing valid: no write, no announcement.
        with pytest.raises(ConfigItemFail):
            await settings.set_configs({"config_dict": {"NOPE": 1}})
        assert await settings.set_configs({"config_dict": {}}) == {}
        assert seen == [{"HISTORY_REPORT_PEROID"}]
    with_store(tmp_path, body)


def test_subscriber_failure_does_not_fail_the_change(tmp_path) -> None:
    async def body(store: Store) -> None:
        settings = RuntimeSettings(store)
        await settings.load()
        settings.subscribe(lambda names: 1 / 0)
        later: List[Set[str]] = []
        settings.subscribe(later.append)
        assert await settings.set_configs({"config_dict": {"GATE_INIT": "1"}}) == {"GATE_INIT": "1"}
        assert later == [{"GATE_INIT"}]
    with_store(tmp_path, body)


def test_library_size_below_the_face_count_fails(tmp_path) -> None:
    """R37: checked against the face count inside the write transaction."""
    def seed(txn: Any, count: int) -> Any:
        rng = np.random.default_rng(0)
        for _ in range(count):
            identity_id, face_id, image_id = (str(uuid.uuid4()) for _ in range(3))
            identities.put(txn, {
                "identity_id": identity_id, "identity_name": "x", "user_type": "employee",
                "permission_ids": [], "ext_user_info": {}, "face_ids": [face_id],
                "register_image_ids": [image_id]})
            faces.put(txn, faces.make_record(face_id, identity_id, image_id,
                                             rng.standard_normal(4).astype(np.float32)))
        return None, []

    async def body(store: Store) -> None:
        await store.write(seed, 10001)
        settings = RuntimeSettings(store)
        await settings.load()
        with pytest.raises(ConfigItemFail) as caught:
            await settings.set_configs({"config_dict": {
                "GATE_DEFAULT_GROUP_SIZE": 10000, "GATE_STRANGER_GROUP_SIZE": 50000}})
        assert caught.value.message == "GATE_DEFAULT_GROUP_SIZE"
        assert settings.value("GATE_DEFAULT_GROUP_SIZE") == 100000
        assert settings.value("GATE_STRANGER_GROUP_SIZE") == 50000
        assert await settings.set_configs({"config_dict": {"GATE_DEFAULT_GROUP_SIZE": 200000}}) \
            == {"GATE_DEFAULT_GROUP_SIZE": 200000}
    with_store(tmp_path, body)


def test_concurrent_setconfigs_leave_the_last_commit_live(tmp_path) -> None:
    async def body(store: Store) -> None:
        settings = RuntimeSettings(store)
        await settings.load()
        await asyncio.gather(*(settings.set_configs({"config_dict": {"HISTORY_REPORT_PEROID": i}})
                               for i in range(1, 41)))
        persisted = (await store.read(stored.get_all))["HISTORY_REPORT_PEROID"]
        assert settings.value("HISTORY_REPORT_PEROID") == persisted
    with_store(tmp_path, body)


# ------------------------------------------------------------------------ login record

def test_password_record_is_a_salted_scrypt_hash(tmp_path) -> None:
    async def body(store: Store) -> None:
        service = LoginService(store)
        assert await service.login({"username": "admin", "password": "admin"}) == {"result": True}
        assert await store.read(credentials.get) is None  # the initial password: no record
        await service.change_password({"username": "admin", "old_password": "admin",
                                       "new_password": "s3cret-\ud800"})
        record = await store.read(credentials.get)
        assert record["scheme"] == "scrypt" and len(record["salt"]) == 16
        assert (record["n"], record["r"], record["p"]) == (2 ** 14, 8, 1)
        assert b"s3cret" not in record["hash"] and len(record["hash"]) == 32
        with pytest.raises(ApiError) as caught:
            await service.login({"username": "admin", "password": "admin"})
        assert caught.value.code == "PASSWORD_ERROR"
        assert await service.login({"username": "admin", "password": "s3cret-\ud800"})
        # Same password again: a fresh salt, so a different hash.
        await service.change_password({"username": "admin", "old_password": "s3cret-\ud800",
                                       "new_password": "s3cret-\ud800"})
        again = await store.read(credentials.get)
        assert again["salt"] != record["salt"] and again["hash"] != record["hash"]
    with_store(tmp_path, body)


def test_stored_hash_parameters_are_honoured() -> None:
    """Records keep their parameters, so the defaults can be raised later."""
    record = dict(login_service.new_record("pw"), n=2 ** 10)
    record["hash"] = login_service.hash_password("pw", record["salt"], n=2 ** 10)
    assert login_service.matches(record, "pw")
    assert not login_service.matches(record, "pW")
