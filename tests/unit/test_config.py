"""Configuration: the shipped conf.yaml, unknown keys, types, CLI overrides."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from sophon_face.config import Config, ConfigError, config_from_mapping, load_config, with_overrides

REPO = Path(__file__).resolve().parents[2]


def _sections(config: Config) -> dict:
    data = dataclasses.asdict(config)
    data.pop("base_dir")
    return data


def test_shipped_conf_yaml_lists_every_setting_with_its_default():
    raw = yaml.safe_load((REPO / "conf.yaml").read_text(encoding="utf-8"))
    defaults = _sections(Config())
    assert set(raw) == set(defaults)
    for section, values in defaults.items():
        assert set(raw[section]) == set(values), section
    shipped = _sections(load_config(str(REPO / "conf.yaml")))
    assert shipped == defaults


def test_unknown_keys_are_rejected_with_their_path():
    with pytest.raises(ConfigError, match=r"^server\.prot: unknown key$"):
        config_from_mapping({"server": {"prot": 1}})
    with pytest.raises(ConfigError, match=r"^sevrer: unknown key$"):
        config_from_mapping({"sevrer": {}})


@pytest.mark.parametrize("raw, message", [
    ({"server": {"port": "5555"}}, r"server\.port: expected int"),
    ({"server": {"port": 70000}}, r"server\.port: invalid value 70000"),
    ({"workers": {"count": True}}, r"workers\.count: expected int"),
    ({"models": {"profile": "gpu"}}, r"models\.profile: invalid value 'gpu'"),
    ({"images": {"roots": "/data"}}, r"images\.roots: expected a list of strings"),
    ({"recognition": {"match_threshold": 101}}, r"recognition\.match_threshold: invalid value"),
    ({"storage": []}, r"storage: expected a mapping"),
    ({"workers": {"batching": "yes"}}, r"workers\.batching: invalid value 'yes'"),
    ({"workers": {"batch_wait_ms": -1}}, r"workers\.batch_wait_ms: invalid value -1"),
])
def test_bad_values_name_the_key(raw, message):
    with pytest.raises(ConfigError, match=message):
        config_from_mapping(raw)


def test_relative_paths_resolve_against_the_file(tmp_path):
    conf = tmp_path / "etc" / "conf.yaml"
    conf.parent.mkdir()
    conf.write_text("storage: {data_dir: ../var}\nimages: {roots: [pics]}\n", encoding="utf-8")
    config = load_config(str(conf))
    assert config.data_dir == (tmp_path / "var").resolve()
    assert config.image_roots == [(tmp_path / "etc" / "pics").resolve()]
    assert config.model_cache_dir == config.data_dir / "models"
    assert config.manifest_path().name == "cpu.yaml"


def test_flags_override_the_file(tmp_path):
    config = with_overrides(Config(), host="127.0.0.1", port=6000, data_dir=str(tmp_path),
                            image_roots=[str(tmp_path)])
    assert (config.server.host, config.server.port) == ("127.0.0.1", 6000)
    assert config.data_dir == tmp_path.resolve() and config.image_roots == [tmp_path.resolve()]
    with pytest.raises(ConfigError, match="--port"):
        with_overrides(Config(), port=0)


def test_unreadable_or_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: [", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))
