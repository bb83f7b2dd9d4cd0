"""scripts/install-se5.sh: syntax, --help, and a full --dry-run read for its key steps.

The dry run executes the script's real logic (option parsing, SAIL wheel lookup in an SDK
tree, bmodel discovery, the rendered conf.yaml and unit) and prints every command instead
of running it; the test checks that nothing was created.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Dict, List

import pytest
import yaml

from sophon_face.config import config_from_mapping

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "install-se5.sh"
UNIT = REPO / "systemd" / "sophon-face.service"
BASH = shutil.which("bash")

pytestmark = pytest.mark.skipif(BASH is None, reason="bash is not installed")

SE5_PINS = {"aiohttp": "3.10.11", "numpy": "1.24.4", "lmdb": "1.8.1",
            "opencv-python-headless": "4.14.0.94"}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([BASH, str(SCRIPT), *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=60)


def test_bash_syntax() -> None:
    result = subprocess.run([BASH, "-n", str(SCRIPT)], stderr=subprocess.PIPE,
                            universal_newlines=True)
    assert result.returncode == 0, result.stderr


def test_help_and_unknown_option() -> None:
    result = _run("--help")
    assert result.returncode == 0
    for option in ("--dry-run", "--sail-wheel", "--bmodels", "--prefix", "--data-dir",
                   "--wheelhouse", "--no-start"):
        assert option in result.stdout, option
    assert "aiohttp==3.10.11" in result.stdout
    bad = _run("--frobnicate")
    assert bad.returncode == 2 and "unknown option" in bad.stderr


@pytest.fixture()
def box(tmp_path: Path) -> Dict[str, Path]:
    """A fake SDK tree with two SAIL wheels, and a bmodels folder with one bmodel."""
    wheels = tmp_path / "sdk" / "sophon-sail" / "python_wheels" / "soc_BM1684_BM1684X"
    for version in ("libsophon-0.4.6_sophonmw-0.6.0", "libsophon-0.4.9_sophonmw-0.8.0"):
        for py in ("py38", "py310"):
            folder = wheels / version / py
            folder.mkdir(parents=True)
            (folder / "sophon_arm-3.8.0-py3-none-any.whl").write_bytes(b"")
    bmodels = tmp_path / "bmodels"
    bmodels.mkdir()
    shutil.copy(REPO / "bmodels" / "manifest.yaml", bmodels / "manifest.yaml")
    (bmodels / "scrfd_10g_kps_int8_1b4b.bmodel").write_bytes(b"")
    return {"sdk": tmp_path / "sdk", "bmodels": bmodels, "prefix": tmp_path / "opt",
            "data": tmp_path / "data"}


def _dry_run(box: Dict[str, Path], *extra: str, user: str = "sophon-face") -> str:
    result = _run("--dry-run", "--prefix", str(box["prefix"]), "--data-dir", str(box["data"]),
                  "--user", user, "--sail-wheel", str(box["sdk"]),
                  "--bmodels", str(box["bmodels"]), *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _commands(output: str) -> List[str]:
    return [line[2:] for line in output.splitlines() if line.startswith("+ ")]


def test_dry_run_prints_every_step_and_changes_nothing(box: Dict[str, Path]) -> None:
    user = f"sf-test-{uuid.uuid4().hex[:8]}"  # certainly absent: useradd is printed
    out = _dry_run(box, user=user)
    commands = _commands(out)
    prefix, venv = str(box["prefix"]), str(box["prefix"] / "venv")

    def command(pattern: str) -> str:
        found = [c for c in commands if re.search(pattern, c)]
        assert found, f"no command matching {pattern!r} in:\n" + "\n".join(commands)
        return found[0]

    command(rf"^useradd --system .*--shell /usr/sbin/nologin .*{user}$")
    command(rf"^install -d -m 0750 -o {user} -g {user} {re.escape(str(box['data']))}$")
    command(rf"-m venv --system-site-packages {re.escape(venv)}$")
    pins = command(r"pip install .*--only-binary=:all: ")
    for name, version in SE5_PINS.items():
        assert f" {name}=={version}" in pins, name
    assert re.search(r" msgpack==\S+", pins) and re.search(r" pyyaml==\S+", pins), pins
    command(rf"pip install .*--no-deps --force-reinstall {re.escape(str(REPO))}$")
    # The SDK wheel for Python 3.8 (the newest libsophon when /opt/sophon has none).
    sail = command(r"pip install .*--no-deps --force-reinstall .*sophon_arm-.*\.whl$")
    assert "/py38/" in sail and "libsophon-0.4.9_sophonmw-0.8.0" in sail, sail
    command(r"pip check$")
    command(r"import sophon.sail")
    command(rf"^install -m 0644 .*manifest.yaml {re.escape(prefix)}/bmodels/manifest.yaml$")
    command(rf"^install -m 0644 .*\.bmodel {re.escape(prefix)}/bmodels/")
    assert "+ write /etc/sophon-face/conf.yaml (mode 0640, root:" in out
    assert "    |   profile: se5 " in out
    assert f"    |   data_dir: {box['data']} " in out
    command(r"sophon-face check-config --config /etc/sophon-face/conf.yaml$")
    assert "+ write /etc/systemd/system/sophon-face.service (mode 0644, root:root):" in out
    assert f"    | ExecStart={venv}/bin/sophon-face serve --config /etc/sophon-face/conf.yaml" in out
    assert f"    | User={user}" in out
    assert commands.index("systemctl daemon-reload") < commands.index(
        "systemctl enable sophon-face.service") < commands.index(
        "systemctl restart sophon-face.service")
    command(r"sophon-face health --url http://127.0.0.1:5555/health$")
    # The order that makes a first install work: user, venv, package, config, unit.
    order = [commands.index(command(p)) for p in (
        r"^useradd", r"-m venv", r"--no-deps --force-reinstall /", r"check-config",
        r"systemctl enable")]
    assert order == sorted(order), order
    assert not box["prefix"].exists() and not box["data"].exists()


def test_dry_run_no_start(box: Dict[str, Path]) -> None:
    commands = _commands(_dry_run(box, "--no-start"))
    assert "systemctl enable sophon-face.service" in commands
    assert not any(c.startswith("systemctl restart") or " health " in c for c in commands)


def test_offline_wheelhouse(box: Dict[str, Path], tmp_path: Path) -> None:
    commands = _commands(_dry_run(box, "--wheelhouse", str(tmp_path / "wheels")))
    installs = [c for c in commands if " -m pip install " in c]
    assert installs and all(f"--no-index --find-links {tmp_path / 'wheels'}" in c
                            for c in installs), installs


def test_missing_sail_wheel_fails_early(box: Dict[str, Path], tmp_path: Path) -> None:
    result = _run("--dry-run", "--sail-wheel", str(tmp_path / "nowhere"),
                  "--bmodels", str(box["bmodels"]))
    assert result.returncode == 1 and "no such file or folder" in result.stderr


def test_rendered_conf_is_a_valid_se5_config(tmp_path: Path) -> None:
    result = _run("--print-conf", "--prefix", "/opt/sf", "--data-dir", "/data/sf")
    assert result.returncode == 0, result.stderr
    config = config_from_mapping(yaml.safe_load(result.stdout), base_dir="/etc/sophon-face")
    assert config.models.profile == "se5"
    assert str(config.data_dir) == "/data/sf"
    assert config.models.manifest == "/opt/sf/bmodels/manifest.yaml"
    assert str(config.remote_event_image_dir) == "/data2/sophon-face/events"
    assert config.workers.count == 2


def test_rendered_unit_follows_the_options() -> None:
    result = _run("--print-unit", "--prefix", "/srv/sf", "--data-dir", "/data/sf",
                  "--remote-dir", "/mnt/disk2/sf", "--user", "face")
    assert result.returncode == 0, result.stderr
    unit = result.stdout
    assert "ExecStart=/srv/sf/venv/bin/sophon-face serve --config /etc/sophon-face/conf.yaml" in unit
    assert "ReadWritePaths=/data/sf -/mnt/disk2/sf" in unit
    assert "WorkingDirectory=/data/sf" in unit and "RequiresMountsFor=/data/sf" in unit
    assert "User=face\n" in unit and "Group=face\n" in unit
    assert "/opt/sophon-face" not in unit and "/data/sophon-face" not in unit
    # With the defaults it is the repository's unit, byte for byte.
    assert _run("--print-unit").stdout == UNIT.read_text(encoding="utf-8")


#: Marker values of the box (Ubuntu 20.04's CPython 3.8 on aarch64).
BOX_ENVIRONMENT = {"python_version": "3.8", "python_full_version": "3.8.10",
                   "platform_machine": "aarch64", "sys_platform": "linux"}


def _script_pins() -> Dict[str, str]:
    text = SCRIPT.read_text(encoding="utf-8")
    block = re.search(r"^PINS=\((.*?)^\)", text, re.S | re.M)
    assert block, "PINS=( ... ) not found"
    return {name.lower(): version for name, version in
            re.findall(r"^\s+([A-Za-z0-9_.-]+)==(\S+)", block.group(1), re.M)}


def _box_requirements(lines: List[str]) -> List:
    """The requirements among ``lines`` that apply on the box."""
    requirements = pytest.importorskip("packaging.requirements")
    found = []
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = requirements.Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(BOX_ENVIRONMENT):
            found.append(requirement)
    return found


def test_pins_cover_and_satisfy_the_package_requirements() -> None:
    """The project is installed with --no-deps: every requirement must be pinned, within
    setup.py's ranges as Python 3.8 evaluates them."""
    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    lines = next(ast.literal_eval(node.value) for node in ast.walk(tree)
                 if isinstance(node, ast.Assign)
                 and any(getattr(t, "id", "") == "INSTALL_REQUIRES" for t in node.targets))
    pins = _script_pins()
    for requirement in _box_requirements(lines):
        name = requirement.name.lower()
        assert name in pins, f"{name} is not pinned in install-se5.sh"
        assert requirement.specifier.contains(pins[name]), (str(requirement), pins[name])


def test_pins_agree_with_the_se5_constraints() -> None:
    constraints = REPO / "constraints-se5.txt"
    if not constraints.is_file():
        pytest.skip("no constraints-se5.txt")
    pins = _script_pins()
    lines = constraints.read_text(encoding="utf-8").splitlines()
    for requirement in _box_requirements(lines):
        name = requirement.name.lower()
        if name in pins:
            assert requirement.specifier.contains(pins[name]), (str(requirement), pins[name])


def test_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed")
    result = subprocess.run([shellcheck, str(SCRIPT)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, universal_newlines=True)
    assert result.returncode == 0, result.stdout
