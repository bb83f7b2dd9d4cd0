"""Runtime configuration and login over real HTTP (api/config.md, api/login.md)."""

from __future__ import annotations

import pytest

from .conftest import make_config
from .live import LiveServer

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


def test_defaults_are_the_spec_example_exactly(fresh_server) -> None:
    reply = fresh_server.post("getconfigs", {})
    assert reply.json == DEFAULTS
    assert '"MATCH_THRESHOLD":82.0' in reply.body.decode()  # floats stay floats
    empty = fresh_server.request("POST", "/sophon/v2/face/getconfigs", b"")
    assert empty.json == DEFAULTS
    assert fresh_server.post("getconfigs", {"config_name": "GATE_DUPLICATE_REMOVAL_TIMEOUT"}).json == \
        {"GATE_DUPLICATE_REMOVAL_TIMEOUT": 6.0}
    assert fresh_server.post("getconfigs", {"config_name": "EVENT_IMAGE_PATH"}).json == \
        {"EVENT_IMAGE_PATH": "local"}  # R34
    assert fresh_server.post("getconfigs", {"config_name": "FOO"}).error == \
        ("INVALID_ARGUMENTS", 'config_name: "FOO"')
    assert fresh_server.post("getconfigs", {"config_name": 5}).error == \
        ("INVALID_ARGUMENTS", "config_name: 5")


@pytest.mark.parametrize("name, sent, stored", [
    ("HISTORY_REPORT_PEROID", "60.0", 60),
    ("HISTORY_REPORT_PEROID", 7.0, 7),
    ("GATE_DUPLICATE_REMOVAL_TIMEOUT", "6.5", 6.5),
    ("GATE_DUPLICATE_REMOVAL_TIMEOUT", 3, 3.0),
    ("ALG_ATTRIBUTE_DETECT", "TRUE", True),
    ("ALG_ATTRIBUTE_DETECT", 0, False),
    ("REGN_VIDEO_FIQA", "0", False),
    ("GATE_INIT", 1, "1"),
    ("GATE_APPLY_MODE", "GRAB", "grab"),
    ("MQ_EXCHANGE_ARGUMENTS", "", {}),
    ("MQ_EXCHANGE_ARGUMENTS", {"x-ttl": 5}, {"x-ttl": 5}),
    ("HISTORY_EVENT_UPLOAD_URL", "http://a/x, https://b:81/y,", "http://a/x, https://b:81/y,"),
    ("REGN_TIME_PART1", "22:00:00,06:00:00", "22:00:00,06:00:00"),
    ("GATE_DEFAULT_GROUP_SIZE", "200000", 200000),
    ("MATCH_THRESHOLD", "75", 75.0),
])
def test_coercion(fresh_server, name, sent, stored) -> None:
    assert fresh_server.post("setconfigs", {"config_dict": {name: sent}}).json == {name: stored}
    assert fresh_server.post("getconfigs", {"config_name": name}).json == {name: stored}


@pytest.mark.parametrize("name, sent", [
    ("HISTORY_REPORT_PEROID", 0), ("HISTORY_REPORT_PEROID", "x"), ("HISTORY_REPORT_PEROID", 1.5),
    ("HISTORY_REPORT_PEROID", True), ("MATCH_THRESHOLD", 101), ("MATCH_THRESHOLD", "NaN"),
    ("ALG_ATTRIBUTE_DETECT", "yes"), ("ALG_ATTRIBUTE_DETECT", 2), ("GATE_APPLY_MODE", "video"),
    ("HISTORY_EVENT_UPLOAD_URL", "ftp://x"), ("REGN_TIME_PART1", "24:00:00,01:00:00"),
    ("REGN_TIME_PART1", "1:00:00,02:00:00"), ("GATE_DEFAULT_GROUP_SIZE", 12345),
    ("REGN_MIN_FACE", 10), ("MQ_SERVER_PORT", 70000), ("MQ_EXCHANGE_ARGUMENTS", [1]),
    ("GATE_PRODUCT_TYPE", "SE5"), ("MQ_LOGIN_STATUS", 0), ("ALG_DEFAULT_GROUP_RANGE", [1]),
    ("NO_SUCH_KEY", 1), ("MQ_USERNAME", 5),
])
def test_refused_values(fresh_server, name, sent) -> None:
    before = fresh_server.post("getconfigs", {}).json
    assert fresh_server.post("setconfigs", {"config_dict": {name: sent}}).error == \
        ("CONFIG_ITEM_FAIL", name)
    assert fresh_server.post("getconfigs", {}).json == before


def test_partial_failure_applies_the_valid_keys_and_persists(models, tmp_path) -> None:
    config = make_config(tmp_path / "daemon")
    server = LiveServer(config, models).start()
    try:
        reply = server.post("setconfigs", {"config_dict": {
            "MATCH_THRESHOLD": "abc", "HISTORY_REPORT_PEROID": 9, "FOO": 1, "EVENT_IMAGE_PATH": "REMOTE"}})
        assert reply.error == ("CONFIG_ITEM_FAIL", "MATCH_THRESHOLD,FOO")  # R35
        assert server.post("getconfigs", {"config_name": "HISTORY_REPORT_PEROID"}).json == \
            {"HISTORY_REPORT_PEROID": 9}
        assert server.post("setconfigs", {"config_dict": {}}).json == {}
        assert server.post("setconfigs", {}).error == ("MISSING_ARGUMENTS", "config_dict")
        assert server.post("setconfigs", {"config_dict": "x"}).error == ("INVALID_ARGUMENTS", 'config_dict: "x"')
        assert server.post("setconfigs", {"config_dict": {"MQ_LICENSE_KEY": "ZKZCPI000120190807142601"}}).status == 200
    finally:
        server.stop()
    again = LiveServer(config, models).start()
    try:
        values = again.post("getconfigs", {}).json
        assert values["HISTORY_REPORT_PEROID"] == 9 and values["GATE_EVENT_IMAGE_PATH"] == "remote"
        assert values["MQ_LICENSE_KEY"] == "ZKZCPI000120190807142601"
    finally:
        again.stop()


def test_library_size_default_comes_from_conf_yaml(models, tmp_path) -> None:
    server = LiveServer(make_config(tmp_path / "daemon", library_capacity=200000), models).start()
    try:
        assert server.post("getconfigs", {"config_name": "GATE_DEFAULT_GROUP_SIZE"}).json == \
            {"GATE_DEFAULT_GROUP_SIZE": 200000}  # conf.yaml's recognition section is the default
        feature = [1.0] + [0.0] * 127
        for i in range(3):
            vector = list(feature)
            vector[i + 1] = 1.0
            assert server.post("createidentity", {"register_feature": vector}).status == 200
        assert server.post("setconfigs", {"config_dict": {"GATE_DEFAULT_GROUP_SIZE": 10000}}).status == 200
    finally:
        server.stop()


def test_login_and_changepassword(fresh_server) -> None:
    server = fresh_server
    assert server.post("login", {"username": "admin", "password": "admin"}).json == {"result": True}
    for body in ({"username": "admin", "password": "wrong"}, {"username": "root", "password": "admin"}):
        assert server.post("login", body).error == ("PASSWORD_ERROR", "password error")
    assert server.post("login", {}).error == ("MISSING_ARGUMENTS", "username")
    assert server.post("login", {"username": 1}).error == ("INVALID_ARGUMENTS", "username: 1")
    assert server.post("login", {"username": "admin"}).error == ("MISSING_ARGUMENTS", "password")
    assert server.post("login", {"username": "admin", "password": 123}).error == \
        ("INVALID_ARGUMENTS", "password: <redacted>")
    assert server.post("changepassword", {"username": "admin", "old_password": "admin"}).error == \
        ("MISSING_ARGUMENTS", "new_password")
    assert server.post("changepassword", {"username": "admin", "old_password": "admin",
                                          "new_password": ""}).error == \
        ("INVALID_ARGUMENTS", "new_password: <redacted>")
    assert server.post("changepassword", {"username": "admin", "old_password": "admin",
                                          "new_password": "x" * 129}).error == \
        ("INVALID_ARGUMENTS", "new_password: <redacted>")
    assert server.post("changepassword", {"username": "admin", "old_password": "nope",
                                          "new_password": "aTIfaSHA"}).error == \
        ("PASSWORD_ERROR", "password error")
    assert server.post("changepassword", {"username": "admin", "old_password": "admin",
                                          "new_password": "aTIfaSHA"}).json == {"result": True}
    assert server.post("login", {"username": "admin", "password": "admin"}).status == 401
    assert server.post("login", {"username": "admin", "password": "aTIfaSHA"}).status == 200
    # Only a salted hash is stored: the password's bytes are nowhere in the database.
    data = b"".join(p.read_bytes() for p in server_lmdb_files(server))
    assert b"aTIfaSHA" not in data


def server_lmdb_files(server):
    from pathlib import Path
    return list((Path(server._config.data_dir) / "lmdb").glob("*.mdb"))
