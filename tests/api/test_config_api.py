"""Runtime configuration over real HTTP (api/config.md): getconfigs / setconfigs."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from sophon_face.store import Store, faces, identities

from .conftest import make_config
from .live import LiveServer, Reply

# config.md 4.9, verbatim (our GATE_PRODUCT_TYPE is "docker", R36).
DEFAULTS = {
    'ALG_ATTRIBUTE_DETECT': False,
    'ALG_DEFAULT_GROUP_RANGE': [10000, 100000, 200000, 300000, 400000, 500000],
    'ALG_STRANGER_GROUP_RANGE': [30000, 50000, 100000],
    'ALG_SUPPORT_MASK': False,
    'GATE_APPLY_MODE': 'recognize',
    'GATE_BOX_USAGE': 'normal',
    'GATE_DEFAULT_GROUP_SIZE': 100000,
    'GATE_DUPLICATE_REMOVAL_TIMEOUT': 6.0,
    'GATE_EVENT_IMAGE_PATH': 'local',
    'GATE_INIT': '0',
    'GATE_MONGO_IP': '127.0.0.1',
    'GATE_PASS_MODE': 'normal',
    'GATE_PRODUCT_TYPE': 'docker',
    'GATE_STRANGER_GROUP_SIZE': 30000,
    'GATE_SUPPORT_STRANGER_GROUP': False,
    'GATE_WORK_MODE': 'local',
    'GRAB_IMAGE_TYPE': 'recognize_face',
    'GRAB_MIN_FACE': 40,
    'GRAB_MODE': 'quality',
    'GRAB_POSE_THRESH': 'high',
    'GRAB_THRESHOLD': 44.0,
    'GRAB_TIME_PART1': '00:00:00,23:59:59',
    'GRAB_TIME_PART1_SWITCH': False,
    'GRAB_TIME_PART2': '00:00:00,23:59:59',
    'GRAB_TIME_PART2_SWITCH': False,
    'GRAB_VIDEO_FIQA': True,
    'HISTORY_EVENT_UPLOAD_URL': '',
    'HISTORY_REPORT_PEROID': 5,
    'MATCH_THRESHOLD': 82.0,
    'MEDIA_DEVICE_MONITOR_REPORT_PEROID': 60,
    'MEDIA_DEVICE_MONITOR_URL': '',
    'MQ_DOWN_QUEUE': '',
    'MQ_EXCHANGE_ARGUMENTS': {},
    'MQ_EXCHANGE_AUTO_DELETE': False,
    'MQ_EXCHANGE_DURABLE': False,
    'MQ_EXCHANGE_NAME': '',
    'MQ_EXCHANGE_PASSIVE': False,
    'MQ_EXCHANGE_TYPE': '',
    'MQ_FIQA_DOWN_QUEUE': '',
    'MQ_FIQA_UP_QUEUE': '',
    'MQ_IMG_SERVER_ADDR': '',
    'MQ_LICENSE_KEY': '',
    'MQ_LOGIN_STATUS': 0,
    'MQ_LOGIN_TOKEN': '',
    'MQ_LOGIN_URL': '',
    'MQ_PASSWORD': '',
    'MQ_REMOTE_SERVER_ADDR': '',
    'MQ_SERVER_IP': '',
    'MQ_SERVER_PORT': 5672,
    'MQ_UNNEED_BIND_EXCHANGE': False,
    'MQ_UPLOAD_VHOST': '',
    'MQ_UP_QUEUE': '',
    'MQ_USERNAME': '',
    'MQ_VHOST': '',
    'REGN_IMAGE_TYPE': 'all',
    'REGN_MIN_FACE': 40,
    'REGN_POSE_THRESH': 'high',
    'REGN_TIME_PART1': '00:00:00,23:59:59',
    'REGN_TIME_PART1_SWITCH': False,
    'REGN_TIME_PART2': '00:00:00,23:59:59',
    'REGN_TIME_PART2_SWITCH': False,
    'REGN_VIDEO_FIQA': True,
}

READ_ONLY = ("GATE_PRODUCT_TYPE", "MQ_LOGIN_STATUS", "ALG_DEFAULT_GROUP_RANGE", "ALG_STRANGER_GROUP_RANGE")
SETTABLE = {k: v for k, v in DEFAULTS.items() if k not in READ_ONLY}


@pytest.fixture(scope="module")
def daemon(models, tmp_path_factory) -> Iterator[LiveServer]:
    live = LiveServer(make_config(tmp_path_factory.mktemp("config-daemon")), models).start()
    yield live
    live.stop()


@pytest.fixture()
def cfg(daemon: LiveServer) -> Iterator[LiveServer]:
    """The module's daemon, every settable key back to its default after the test (which
    also shows that all 58 settable keys can be set in one request)."""
    yield daemon
    reset = daemon.post("setconfigs", {"config_dict": SETTABLE})
    assert reply_ok(reset) == SETTABLE


def reply_ok(reply: Reply) -> Any:
    assert reply.status == 200, reply
    return reply.json


def raw_post(server: LiveServer, endpoint: str, text: str) -> Reply:
    return server.request("POST", f"/sophon/v2/face/{endpoint}", text.encode("utf-8"),
                          {"Content-Type": "application/json"})


# ------------------------------------------------------------------------ getconfigs

def test_defaults_are_the_spec_example_exactly(cfg) -> None:
    assert len(DEFAULTS) == 62
    reply = cfg.post("getconfigs", {})
    assert reply_ok(reply) == DEFAULTS
    text = reply.body.decode()
    # Float keys stay JSON floats, int keys ints (R36).
    for literal in ('"MATCH_THRESHOLD":82.0', '"GRAB_THRESHOLD":44.0',
                    '"GATE_DUPLICATE_REMOVAL_TIMEOUT":6.0', '"HISTORY_REPORT_PEROID":5,',
                    '"GATE_DEFAULT_GROUP_SIZE":100000,'):
        assert literal in text
    # Flat (R33), sorted keys.
    assert list(reply.json) == sorted(DEFAULTS)
    assert reply_ok(cfg.request("POST", "/sophon/v2/face/getconfigs", b"")) == DEFAULTS
    assert reply_ok(cfg.post("getconfigs", {"config_name": None})) == DEFAULTS


def test_get_one_key_and_the_alias(cfg) -> None:
    assert reply_ok(cfg.post("getconfigs", {"config_name": "GATE_DUPLICATE_REMOVAL_TIMEOUT"})) == \
        {"GATE_DUPLICATE_REMOVAL_TIMEOUT": 6.0}
    for name, value in DEFAULTS.items():
        assert reply_ok(cfg.post("getconfigs", {"config_name": name})) == {name: value}
    # R34: the legacy name, answered under the name sent.
    assert reply_ok(cfg.post("getconfigs", {"config_name": "EVENT_IMAGE_PATH"})) == \
        {"EVENT_IMAGE_PATH": "local"}


@pytest.mark.parametrize("value, message", [
    ("FOO", 'config_name: "FOO"'),
    ("match_threshold", 'config_name: "match_threshold"'),  # case-sensitive
    ("", 'config_name: ""'),
    (5, "config_name: 5"),
    (True, "config_name: true"),
    (["MATCH_THRESHOLD"], 'config_name: ["MATCH_THRESHOLD"]'),
    ("x" * 300, "config_name: <string of 300 chars>"),
])
def test_get_unknown_or_bad_name(cfg, value, message) -> None:
    assert cfg.post("getconfigs", {"config_name": value}).error == ("INVALID_ARGUMENTS", message)


# ------------------------------------------------------------------------ setconfigs

@pytest.mark.parametrize("name, sent, stored", [
    ("HISTORY_REPORT_PEROID", "60.0", 60),
    ("HISTORY_REPORT_PEROID", " 60 ", 60),
    ("HISTORY_REPORT_PEROID", 7.0, 7),
    ("MEDIA_DEVICE_MONITOR_REPORT_PEROID", "1", 1),
    ("GRAB_MIN_FACE", "300", 300),
    ("REGN_MIN_FACE", 20, 20),
    ("MQ_SERVER_PORT", "65535", 65535),
    ("GATE_DUPLICATE_REMOVAL_TIMEOUT", "6.5", 6.5),
    ("GATE_DUPLICATE_REMOVAL_TIMEOUT", 3, 3.0),
    ("GATE_DUPLICATE_REMOVAL_TIMEOUT", 0, 0.0),
    ("MATCH_THRESHOLD", "75", 75.0),
    ("MATCH_THRESHOLD", 100, 100.0),
    ("GRAB_THRESHOLD", "0", 0.0),
    ("ALG_ATTRIBUTE_DETECT", "TRUE", True),
    ("ALG_ATTRIBUTE_DETECT", 1, True),
    ("ALG_SUPPORT_MASK", "1", True),
    ("REGN_VIDEO_FIQA", "0", False),
    ("GRAB_VIDEO_FIQA", "False", False),
    ("MQ_EXCHANGE_DURABLE", 0, False),
    ("GATE_INIT", 1, "1"),
    ("GATE_INIT", "1", "1"),
    ("GATE_APPLY_MODE", "GRAB", "grab"),
    ("GATE_WORK_MODE", "Mq", "mq"),
    ("GATE_BOX_USAGE", "FIQA", "fiqa"),
    ("GATE_PASS_MODE", "AllPass", "allpass"),
    ("GATE_EVENT_IMAGE_PATH", "Remote", "remote"),
    ("GRAB_MODE", "SPEED", "speed"),
    ("GRAB_IMAGE_TYPE", "Spot_Image", "spot_image"),
    ("GRAB_POSE_THRESH", "OFF", "off"),
    ("REGN_POSE_THRESH", "Middle", "middle"),
    ("REGN_IMAGE_TYPE", "RECOGNIZE_FACE", "recognize_face"),
    ("MQ_EXCHANGE_ARGUMENTS", "", {}),
    ("MQ_EXCHANGE_ARGUMENTS", {"x-ttl": 5, "nested": {"a": [1, "二", None]}},
     {"x-ttl": 5, "nested": {"a": [1, "二", None]}}),
    ("MQ_USERNAME", "小王", "小王"),
    ("MQ_PASSWORD", "p@ss", "p@ss"),
    ("GATE_MONGO_IP", "", ""),
    ("HISTORY_EVENT_UPLOAD_URL", "http://a/x, https://b:81/y,", "http://a/x, https://b:81/y,"),
    ("HISTORY_EVENT_UPLOAD_URL", "HTTP://192.168.0.12:80/test", "HTTP://192.168.0.12:80/test"),
    ("HISTORY_EVENT_UPLOAD_URL", "", ""),
    ("MEDIA_DEVICE_MONITOR_URL", "https://m.example/status", "https://m.example/status"),
    ("REGN_TIME_PART1", "22:00:00,06:00:00", "22:00:00,06:00:00"),
    ("REGN_TIME_PART2", "00:00:00,00:00:00", "00:00:00,00:00:00"),
    ("GRAB_TIME_PART1", "23:59:59,00:00:00", "23:59:59,00:00:00"),
    ("GATE_DEFAULT_GROUP_SIZE", "200000", 200000),
    ("GATE_DEFAULT_GROUP_SIZE", 500000, 500000),
    ("GATE_STRANGER_GROUP_SIZE", 100000.0, 100000),
])
def test_coercion(cfg, name, sent, stored) -> None:
    reply = cfg.post("setconfigs", {"config_dict": {name: sent}})
    assert reply_ok(reply) == {name: stored}
    assert reply_ok(cfg.post("getconfigs", {"config_name": name})) == {name: stored}
    if isinstance(stored, float):  # a float key is a JSON float even when sent as an int
        assert f'"{name}":{stored!r}' in reply.body.decode()


@pytest.mark.parametrize("name, sent", [
    # int rules and conversion
    ("HISTORY_REPORT_PEROID", 0), ("HISTORY_REPORT_PEROID", -5), ("HISTORY_REPORT_PEROID", "x"),
    ("HISTORY_REPORT_PEROID", 1.5), ("HISTORY_REPORT_PEROID", "1.5"), ("HISTORY_REPORT_PEROID", True),
    ("HISTORY_REPORT_PEROID", ""), ("HISTORY_REPORT_PEROID", [5]), ("HISTORY_REPORT_PEROID", "1e20"),
    ("MEDIA_DEVICE_MONITOR_REPORT_PEROID", 0),
    ("REGN_MIN_FACE", 19), ("REGN_MIN_FACE", 301), ("GRAB_MIN_FACE", 10),
    ("MQ_SERVER_PORT", 0), ("MQ_SERVER_PORT", 65536),
    # float rules
    ("MATCH_THRESHOLD", 100.01), ("MATCH_THRESHOLD", -1), ("MATCH_THRESHOLD", "NaN"),
    ("MATCH_THRESHOLD", "abc"), ("MATCH_THRESHOLD", False), ("GRAB_THRESHOLD", 101),
    ("GATE_DUPLICATE_REMOVAL_TIMEOUT", -0.5),
    # bool
    ("ALG_ATTRIBUTE_DETECT", "yes"), ("ALG_ATTRIBUTE_DETECT", 2), ("ALG_ATTRIBUTE_DETECT", ""),
    ("REGN_TIME_PART1_SWITCH", "on"),
    # enumerations
    ("GATE_APPLY_MODE", "video"), ("GATE_WORK_MODE", "cloud"), ("GATE_INIT", 2), ("GATE_INIT", "true"),
    ("GATE_EVENT_IMAGE_PATH", "/data/events"), ("GATE_BOX_USAGE", ""), ("GATE_PASS_MODE", 1),
    ("GRAB_MODE", "fast"), ("GRAB_IMAGE_TYPE", "both"), ("GRAB_POSE_THRESH", "normal"),
    ("REGN_POSE_THRESH", None), ("REGN_IMAGE_TYPE", "face"),
    # URLs
    ("HISTORY_EVENT_UPLOAD_URL", "ftp://x"), ("HISTORY_EVENT_UPLOAD_URL", "www.xxx.com/event"),
    ("HISTORY_EVENT_UPLOAD_URL", "http://a/x,ftp://b"), ("HISTORY_EVENT_UPLOAD_URL", "http://"),
    ("HISTORY_EVENT_UPLOAD_URL", 5), ("MEDIA_DEVICE_MONITOR_URL", "rtsp://cam/1"),
    # time windows
    ("REGN_TIME_PART1", "24:00:00,01:00:00"), ("REGN_TIME_PART1", "1:00:00,02:00:00"),
    ("REGN_TIME_PART1", "00:00:00"), ("REGN_TIME_PART2", "00:60:00,01:00:00"),
    ("REGN_TIME_PART2", "00:00:00,01:00:60"), ("GRAB_TIME_PART1", "00:00:00, 01:00:00"),
    ("GRAB_TIME_PART2", "00:00:00,01:00:00\n"),
    # library sizes (R37: members of the ranges)
    ("GATE_DEFAULT_GROUP_SIZE", 12345), ("GATE_DEFAULT_GROUP_SIZE", 50000),
    ("GATE_STRANGER_GROUP_SIZE", 10000),
    # strings and objects
    ("MQ_USERNAME", 5), ("MQ_LOGIN_URL", None), ("MQ_LICENSE_KEY", ["k"]),
    ("MQ_EXCHANGE_ARGUMENTS", [1]), ("MQ_EXCHANGE_ARGUMENTS", "{}"),
    # read-only and unknown keys
    ("GATE_PRODUCT_TYPE", "SE5"), ("GATE_PRODUCT_TYPE", "docker"), ("MQ_LOGIN_STATUS", 0),
    ("ALG_DEFAULT_GROUP_RANGE", [1]), ("ALG_STRANGER_GROUP_RANGE", [30000, 50000, 100000]),
    ("NO_SUCH_KEY", 1), ("match_threshold", 80), ("", 1),
])
def test_refused_values(cfg, name, sent) -> None:
    assert cfg.post("setconfigs", {"config_dict": {name: sent}}).error == ("CONFIG_ITEM_FAIL", name)
    assert reply_ok(cfg.post("getconfigs", {})) == DEFAULTS


def test_alias_is_set_and_echoed_under_the_name_sent(cfg) -> None:
    assert reply_ok(cfg.post("setconfigs", {"config_dict": {"EVENT_IMAGE_PATH": "remote"}})) == \
        {"EVENT_IMAGE_PATH": "remote"}  # R34
    assert reply_ok(cfg.post("getconfigs", {"config_name": "GATE_EVENT_IMAGE_PATH"})) == \
        {"GATE_EVENT_IMAGE_PATH": "remote"}
    assert cfg.post("setconfigs", {"config_dict": {"EVENT_IMAGE_PATH": "elsewhere"}}).error == \
        ("CONFIG_ITEM_FAIL", "EVENT_IMAGE_PATH")


def test_several_keys_in_one_request(cfg) -> None:
    sent = {"HISTORY_EVENT_UPLOAD_URL": "http://www.xxx.com/event_recieve", "HISTORY_REPORT_PEROID": 5,
            "GATE_DUPLICATE_REMOVAL_TIMEOUT": "6.0", "MATCH_THRESHOLD": 80}
    assert reply_ok(cfg.post("setconfigs", {"config_dict": sent})) == {
        "HISTORY_EVENT_UPLOAD_URL": "http://www.xxx.com/event_recieve", "HISTORY_REPORT_PEROID": 5,
        "GATE_DUPLICATE_REMOVAL_TIMEOUT": 6.0, "MATCH_THRESHOLD": 80.0}
    values = reply_ok(cfg.post("getconfigs", {}))
    assert values["MATCH_THRESHOLD"] == 80.0
    assert values["HISTORY_EVENT_UPLOAD_URL"] == "http://www.xxx.com/event_recieve"


def test_partial_failure_applies_the_valid_keys(cfg) -> None:
    reply = cfg.post("setconfigs", {"config_dict": {
        "MATCH_THRESHOLD": "abc", "HISTORY_REPORT_PEROID": 9, "FOO": 1, "EVENT_IMAGE_PATH": "REMOTE",
        "GATE_PRODUCT_TYPE": "SE5", "REGN_MIN_FACE": "41"}})
    assert reply.status == 400
    assert reply.error == ("CONFIG_ITEM_FAIL", "MATCH_THRESHOLD,FOO,GATE_PRODUCT_TYPE")  # R35
    values = reply_ok(cfg.post("getconfigs", {}))
    assert values == dict(DEFAULTS, HISTORY_REPORT_PEROID=9, GATE_EVENT_IMAGE_PATH="remote",
                          REGN_MIN_FACE=41)
    # Every key failing: the same error, nothing changed.
    assert cfg.post("setconfigs", {"config_dict": {"B": 1, "A": 2}}).error == ("CONFIG_ITEM_FAIL", "B,A")


def test_setconfigs_body_errors(cfg) -> None:
    assert reply_ok(cfg.post("setconfigs", {"config_dict": {}})) == {}
    assert cfg.post("setconfigs", {}).error == ("MISSING_ARGUMENTS", "config_dict")
    assert cfg.post("setconfigs", {"config_dict": None}).error == ("MISSING_ARGUMENTS", "config_dict")
    assert cfg.request("POST", "/sophon/v2/face/setconfigs", b"").error == \
        ("EMPTY_REQUEST_JSON", "empty request body")
    for value, shown in (("x", '"x"'), ([], "[]"), (5, "5"), (True, "true"),
                         ([["MATCH_THRESHOLD", 80]], '[["MATCH_THRESHOLD",80]]')):
        assert cfg.post("setconfigs", {"config_dict": value}).error == \
            ("INVALID_ARGUMENTS", f"config_dict: {shown}")
    assert reply_ok(cfg.post("getconfigs", {})) == DEFAULTS


def test_a_later_duplicate_key_wins(cfg) -> None:
    reply = raw_post(cfg, "setconfigs", '{"config_dict": {"REGN_MIN_FACE": 50, "REGN_MIN_FACE": 60}}')
    assert reply_ok(reply) == {"REGN_MIN_FACE": 60}


@pytest.mark.parametrize("name, value", [
    ("MATCH_THRESHOLD", "NaN"),
    ("MATCH_THRESHOLD", "-Infinity"),
    ("MATCH_THRESHOLD", "1e999"),
    ("MATCH_THRESHOLD", "9" * 400),               # an int beyond float range
    ("HISTORY_REPORT_PEROID", "9" * 400),
    ("HISTORY_REPORT_PEROID", "1e400"),
    ("HISTORY_REPORT_PEROID", "2147483648"),      # beyond our int bound
    ("MQ_EXCHANGE_ARGUMENTS", '{"a": NaN}'),     # Python's parser accepts NaN
    ("MQ_EXCHANGE_ARGUMENTS", '{"a": %d}' % 2 ** 70),  # beyond msgpack
    ("MQ_EXCHANGE_ARGUMENTS", '{"a":' * 100 + "1" + "}" * 100),
    ("MQ_USERNAME", '"%s"' % ("x" * 5000)),
])
def test_hostile_values_fail_the_key_not_the_daemon(cfg, name, value) -> None:
    text = '{"config_dict": {"%s": %s}}' % (name, value)
    assert raw_post(cfg, "setconfigs", text).error == ("CONFIG_ITEM_FAIL", name)
    assert reply_ok(cfg.post("getconfigs", {})) == DEFAULTS


def test_hostile_requests_never_5xx(cfg) -> None:
    many = {f"KEY_{i}": i for i in range(5000)}
    reply = cfg.post("setconfigs", {"config_dict": dict(many, HISTORY_REPORT_PEROID=6)})
    assert reply.error == ("CONFIG_ITEM_FAIL", ",".join(many))
    assert reply_ok(cfg.post("getconfigs", {"config_name": "HISTORY_REPORT_PEROID"})) == \
        {"HISTORY_REPORT_PEROID": 6}
    huge_name = "K" * 100000
    assert cfg.post("setconfigs", {"config_dict": {huge_name: 1}}).error == ("CONFIG_ITEM_FAIL", huge_name)
    # Lone surrogates and control characters: stored and echoed, JSON-escaped.
    odd = "\ud800 \u0000 \u202e 小"
    reply = raw_post(cfg, "setconfigs", json.dumps({"config_dict": {"MQ_USERNAME": odd}}))
    assert reply_ok(reply) == {"MQ_USERNAME": odd}
    assert reply_ok(cfg.post("getconfigs", {"config_name": "MQ_USERNAME"})) == {"MQ_USERNAME": odd}
    for text in ('{"config_name": {"a": 1}}', '{"config_name": "\\ud800"}', "[]", "null", '"x"'):
        assert cfg.request("POST", "/sophon/v2/face/getconfigs", text.encode(),
                           {"Content-Type": "application/json"}).status == 400
    assert cfg.post("getconfigs", {"config_name": "MATCH_THRESHOLD", "extra": [1]}).status == 200


# ------------------------------------------------------------------------ persistence, R37

def test_values_persist_across_a_restart(models, tmp_path) -> None:
    config = make_config(tmp_path / "daemon")
    server = LiveServer(config, models).start()
    try:
        reply = server.post("setconfigs", {"config_dict": {
            "MATCH_THRESHOLD": "abc", "HISTORY_REPORT_PEROID": 9, "EVENT_IMAGE_PATH": "REMOTE",
            "MQ_LICENSE_KEY": "ZKZCPI000120190807142601", "MQ_EXCHANGE_ARGUMENTS": {"x": [1.5]},
            "GATE_DUPLICATE_REMOVAL_TIMEOUT": 2, "REGN_TIME_PART1_SWITCH": "true"}})
        assert reply.error == ("CONFIG_ITEM_FAIL", "MATCH_THRESHOLD")
    finally:
        server.stop()
    expected = dict(DEFAULTS, HISTORY_REPORT_PEROID=9, GATE_EVENT_IMAGE_PATH="remote",
                    MQ_LICENSE_KEY="ZKZCPI000120190807142601", MQ_EXCHANGE_ARGUMENTS={"x": [1.5]},
                    GATE_DUPLICATE_REMOVAL_TIMEOUT=2.0, REGN_TIME_PART1_SWITCH=True)
    again = LiveServer(config, models).start()
    try:
        reply = again.post("getconfigs", {})
        assert reply_ok(reply) == expected
        assert '"GATE_DUPLICATE_REMOVAL_TIMEOUT":2.0' in reply.body.decode()
    finally:
        again.stop()


def test_conf_yaml_recognition_section_supplies_three_defaults(models, tmp_path) -> None:
    config = make_config(tmp_path / "daemon", library_capacity=200000, match_threshold=75.5,
                         min_face_size=64)
    server = LiveServer(config, models).start()
    try:
        values = reply_ok(server.post("getconfigs", {}))
        assert values == dict(DEFAULTS, GATE_DEFAULT_GROUP_SIZE=200000, MATCH_THRESHOLD=75.5,
                              REGN_MIN_FACE=64)
        # A set value beats the conf.yaml default.
        assert reply_ok(server.post("setconfigs", {"config_dict": {"MATCH_THRESHOLD": 90}})) == \
            {"MATCH_THRESHOLD": 90.0}
    finally:
        server.stop()


def _seed_faces(data_dir: Path, count: int, dim: int) -> None:
    """``count`` identities of one 128-d face each, written straight into the store (as an
    import would): faster than ``count`` createidentity calls."""
    def write(txn: Any) -> Any:
        rng = np.random.default_rng(7)
        for _ in range(count):
            identity_id, face_id, image_id = (str(uuid.uuid4()) for _ in range(3))
            identities.put(txn, {
                "identity_id": identity_id, "identity_name": "x", "user_type": "employee",
                "permission_ids": [], "ext_user_info": {}, "face_ids": [face_id],
                "register_image_ids": [image_id]})
            vector = rng.standard_normal(dim).astype(np.float32)
            faces.put(txn, faces.make_record(face_id, identity_id, image_id,
                                             vector / np.linalg.norm(vector)))
        return None, []

    async def main() -> None:
        store = Store(data_dir, min_free_bytes=0)
        await store.open()
        try:
            await store.write(write)
        finally:
            await store.close()

    asyncio.run(main())


def test_library_size_below_the_face_count_is_refused(models, tmp_path) -> None:
    """R37: upstream wiped the database; we refuse a size below the stored face count."""
    config = make_config(tmp_path / "daemon")
    _seed_faces(config.data_dir, 10001, models.feature_dim)
    server = LiveServer(config, models).start()
    try:
        reply = server.post("setconfigs", {"config_dict": {
            "GATE_DEFAULT_GROUP_SIZE": 10000, "GATE_STRANGER_GROUP_SIZE": 30000}})
        assert reply.error == ("CONFIG_ITEM_FAIL", "GATE_DEFAULT_GROUP_SIZE")
        assert reply_ok(server.post("getconfigs", {"config_name": "GATE_DEFAULT_GROUP_SIZE"})) == \
            {"GATE_DEFAULT_GROUP_SIZE": 100000}
        assert reply_ok(server.post("setconfigs", {"config_dict": {"GATE_DEFAULT_GROUP_SIZE": 200000}})) \
            == {"GATE_DEFAULT_GROUP_SIZE": 200000}
        # Lowering to a size that still holds every face is allowed.
        assert reply_ok(server.post("setconfigs", {"config_dict": {"GATE_DEFAULT_GROUP_SIZE": "100000"}})) \
            == {"GATE_DEFAULT_GROUP_SIZE": 100000}
    finally:
        server.stop()


def test_library_size_is_live(models, tmp_path) -> None:
    """GATE_DEFAULT_GROUP_SIZE is the capacity createidentity checks (GROUP_LEN_ERROR)."""
    config = make_config(tmp_path / "daemon")
    _seed_faces(config.data_dir, 10000, models.feature_dim)
    server = LiveServer(config, models).start()
    try:
        assert reply_ok(server.post("setconfigs", {"config_dict": {"GATE_DEFAULT_GROUP_SIZE": 10000}})) \
            == {"GATE_DEFAULT_GROUP_SIZE": 10000}
        feature = [1.0] + [0.0] * (models.feature_dim - 1)
        assert server.post("createidentity", {"register_feature": feature}).error == \
            ("GROUP_LEN_ERROR", "face library capacity exceeded")
        reply_ok(server.post("setconfigs", {"config_dict": {"GATE_DEFAULT_GROUP_SIZE": 100000}}))
        assert server.post("createidentity", {"register_feature": feature}).status == 200
    finally:
        server.stop()
