#!/usr/bin/env bash
# Install sophon-face on a SOPHGO SE5 as a hardened systemd service. Run it as root from a
# checkout (or an unpacked release) of this repository on the box; --help says what it does.
# Safe to run again: it only creates what is missing, keeps an existing configuration,
# re-installs the package and the unit, and restarts the service.
set -euo pipefail
shopt -s nullglob

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# The box: Ubuntu 20.04, CPython 3.8, aarch64, numpy < 2. The newest releases with cp38
# aarch64 (manylinux2014) wheels, checked with `pip download --platform
# manylinux2014_aarch64 --python-version 38 --only-binary=:all:` together with their
# dependencies. Keep in step with constraints-se5.txt (tests/unit/test_install_script.py).
PINS=(
    aiohttp==3.10.11
    numpy==1.24.4
    lmdb==1.8.1
    opencv-python-headless==4.14.0.94
    msgpack==1.1.1
    pyyaml==6.0.3
    prometheus-client==0.21.1  # pure Python; the newest release for Python 3.8
    tqdm==4.67.1  # pure Python
    simsimd==6.5.16  # cp38 aarch64 wheel
)
PIP_PIN=pip==25.0.1  # the last pip for Python 3.8; Ubuntu 20.04's venv brings pip 20.0

PREFIX=/opt/sophon-face
DATA_DIR=/data/sophon-face
REMOTE_DIR=/data2/sophon-face
CONFIG_DIR=/etc/sophon-face      # fixed: the unit reads /etc/sophon-face/conf.yaml
UNIT_DIR=/etc/systemd/system
UNIT_NAME=sophon-face.service
SERVICE_USER=sophon-face
PYTHON=python3
SAIL_WHEEL=""
BMODELS_DIR="$SRC/bmodels"
WHEELHOUSE=""
START=1
DRY_RUN=0
PRINT=""

usage() {
    cat <<EOF
Usage: scripts/install-se5.sh [options]

Installs sophon-face on a SOPHGO SE5 (SophonSDK >= v22.09: Ubuntu 20.04, Python 3.8):
  1. a system user '$SERVICE_USER', added to the groups that own the TPU/VPU/ION device
     nodes (/dev/bm-tpu*, /dev/bm-sophon*, /dev/bmdev-ctl, /dev/ion, /dev/jpu, /dev/vpu,
     /dev/bm-vpp) where they are not world-accessible;
  2. the data directory (LMDB, event images) on the data partition, owned by that user;
  3. a virtual environment in PREFIX/venv with --system-site-packages, so that it sees
     the SDK's SAIL wheel when it is installed system-wide, with these pins:
       ${PINS[*]}
     then this project (no 'cpu' extra: the box runs bmodels), then SAIL from --sail-wheel;
  4. the bmodels and their manifest in PREFIX/bmodels;
  5. $CONFIG_DIR/conf.yaml (profile se5, data on the data partition) unless it exists,
     checked with 'sophon-face check-config';
  6. the systemd unit ($UNIT_DIR/$UNIT_NAME: Type=notify, watchdog, hardened),
     enabled and (re)started: 'systemctl restart' returns once the daemon sent READY=1;
  7. 'sophon-face health'.

Options:
  --dry-run             print every command (and every file it would write), change nothing
  --sail-wheel PATH     SAIL wheel to install (sophon_arm-*.whl), or the SDK folder to find
                        it in (sophon-sail/python_wheels/soc_BM1684_BM1684X/libsophon-*/py38/,
                        the libsophon version in /opt/sophon preferred). Without it, SAIL
                        must already be importable (installed system-wide).
  --bmodels DIR         compiled bmodels and manifest.yaml (default: $BMODELS_DIR;
                        bmodels/README.md says how to compile them)
  --prefix DIR          program files (default: $PREFIX)
  --data-dir DIR        data directory (default: $DATA_DIR)
  --remote-dir DIR      second disk for "remote" event images (default: $REMOTE_DIR,
                        used only if its parent is mounted)
  --user NAME           service user (default: $SERVICE_USER)
  --python EXE          the interpreter for the venv (default: $PYTHON; must be 3.8 on a box)
  --wheelhouse DIR      install offline from wheels in DIR (pip --no-index --find-links);
                        fill it on a connected host with
                          pip download --platform manylinux2014_aarch64 --python-version 38 \\
                            --only-binary=:all: -d DIR ${PINS[*]} $PIP_PIN setuptools wheel
  --no-start            enable the unit but neither (re)start it nor run the health check
  --print-conf          print the conf.yaml it would write, and exit
  --print-unit          print the unit it would install, and exit
  -h, --help            this text
EOF
}

die() { echo "install-se5: error: $*" >&2; exit 1; }
warn() { echo "install-se5: warning: $*" >&2; }
step() { echo "==> $*"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --sail-wheel) SAIL_WHEEL="${2:?--sail-wheel needs a path}"; shift ;;
        --bmodels) BMODELS_DIR="${2:?--bmodels needs a folder}"; shift ;;
        --prefix) PREFIX="${2:?--prefix needs a folder}"; shift ;;
        --data-dir) DATA_DIR="${2:?--data-dir needs a folder}"; shift ;;
        --remote-dir) REMOTE_DIR="${2:?--remote-dir needs a folder}"; shift ;;
        --user) SERVICE_USER="${2:?--user needs a name}"; shift ;;
        --python) PYTHON="${2:?--python needs an interpreter}"; shift ;;
        --wheelhouse) WHEELHOUSE="${2:?--wheelhouse needs a folder}"; shift ;;
        --no-start) START=0 ;;
        --print-conf) PRINT=conf ;;
        --print-unit) PRINT=unit ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install-se5: unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

VENV="$PREFIX/venv"
CONF="$CONFIG_DIR/conf.yaml"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check)
[ -n "$WHEELHOUSE" ] && PIP+=(--no-index --find-links "$WHEELHOUSE")

# run CMD...: run it, or print it under --dry-run (words with shell syntax single-quoted).
run() {
    if [ "$DRY_RUN" = 1 ]; then
        local line="+" word
        for word in "$@"; do
            if [[ "$word" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
                line+=" $word"
            else
                line+=" '${word//\'/\'\\\'\'}'"
            fi
        done
        echo "$line"
    else
        "$@"
    fi
}

# write_file PATH MODE OWNER:GROUP < content: replace PATH atomically, or print it.
write_file() {
    local path="$1" mode="$2" owner="$3" content
    content="$(cat)"
    if [ "$DRY_RUN" = 1 ]; then
        echo "+ write $path (mode $mode, $owner):"
        printf '%s\n' "$content" | sed 's/^/    | /'
        return
    fi
    local tmp
    tmp="$(mktemp "$path.XXXXXX")"
    printf '%s\n' "$content" >"$tmp"
    chmod "$mode" "$tmp"
    chown "$owner" "$tmp"
    mv -f "$tmp" "$path"
}

# The shipped conf.yaml with the SE5 settings; every other default and comment kept.
render_conf() {
    local conf
    conf="$(sed -e "s|^  profile: cpu |  profile: se5 |" \
                -e "s|^  data_dir: \./data |  data_dir: $DATA_DIR |" \
                -e "s|^  manifest: \"\" |  manifest: $PREFIX/bmodels/manifest.yaml |" \
                -e "s|^  remote_image_dir: /data2/events |  remote_image_dir: $REMOTE_DIR/events |" \
                -e "s|^  count: 1 |  count: 2 |" \
                "$SRC/conf.yaml")"
    local expect
    for expect in "  profile: se5 " "  data_dir: $DATA_DIR " \
                  "  manifest: $PREFIX/bmodels/manifest.yaml " \
                  "  remote_image_dir: $REMOTE_DIR/events " "  count: 2 "; do
        grep -qF -- "$expect" <<<"$conf" || die "conf.yaml changed shape: no '$expect' after editing it"
    done
    echo "# Written by scripts/install-se5.sh: the SE5 profile (bmodels through SAIL), data on"
    echo "# the data partition. Edit freely: the installer never overwrites this file."
    printf '%s\n' "$conf"
}

render_unit() {
    sed -e "s|/opt/sophon-face|$PREFIX|g" \
        -e "s|/data2/sophon-face|$REMOTE_DIR|g" \
        -e "s|/data/sophon-face|$DATA_DIR|g" \
        -e "s|^User=sophon-face\$|User=$SERVICE_USER|" \
        -e "s|^Group=sophon-face\$|Group=$SERVICE_USER|" \
        "$SRC/systemd/$UNIT_NAME"
}

case "$PRINT" in
    conf) render_conf; exit 0 ;;
    unit) render_unit; exit 0 ;;
esac

# ---------------------------------------------------------------------------- checks
step "checks"
if [ "$DRY_RUN" = 1 ]; then
    echo "dry run: nothing is changed; commands are printed with a leading '+'"
elif [ "$(id -u)" != 0 ]; then
    die "run as root (sudo), or try --dry-run"
fi
[ "$(uname -m)" = aarch64 ] || warn "this is $(uname -m), not the SE5's aarch64"
PY_VERSION="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" \
    || die "$PYTHON does not run (--python EXE)"
[ "$PY_VERSION" = 3.8 ] || warn "$PYTHON is Python $PY_VERSION; SAIL's SoC wheels and these pins are for 3.8"
if [ ! -f "$SRC/setup.py" ] || [ ! -f "$SRC/conf.yaml" ]; then
    die "run me from a sophon-face checkout ($SRC)"
fi
if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    run apt-get install -y python3-venv  # Ubuntu splits venv's pip bootstrap off
fi

# SAIL: the wheel to install, if any (resolved now, so that a wrong path fails early).
SAIL_FILE=""
if [ -n "$SAIL_WHEEL" ]; then
    if [ -f "$SAIL_WHEEL" ]; then
        SAIL_FILE="$SAIL_WHEEL"
    elif [ -d "$SAIL_WHEEL" ]; then
        mapfile -t candidates < <(find "$SAIL_WHEEL" -path '*soc_BM1684_BM1684X*' -path '*/py38/*' \
                                      -name 'sophon_arm-*.whl' | sort -V)
        [ "${#candidates[@]}" -gt 0 ] || die "no soc_BM1684_BM1684X/*/py38/sophon_arm-*.whl under $SAIL_WHEEL"
        SAIL_FILE="${candidates[-1]}"
        libsophon=(/opt/sophon/libsophon-[0-9]*)
        if [ "${#libsophon[@]}" -gt 0 ]; then
            version="$(printf '%s\n' "${libsophon[@]##*/libsophon-}" | sort -V | tail -n 1)"
            for candidate in "${candidates[@]}"; do
                case "$candidate" in *"/libsophon-${version}_"*) SAIL_FILE="$candidate" ;; esac
            done
            case "$SAIL_FILE" in *"/libsophon-${version}_"*) ;;
                *) warn "no SAIL wheel built for libsophon $version; taking $SAIL_FILE" ;; esac
        fi
    else
        die "--sail-wheel $SAIL_WHEEL: no such file or folder"
    fi
    echo "SAIL wheel: $SAIL_FILE"
fi

BMODELS=("$BMODELS_DIR"/*.bmodel)
[ -f "$BMODELS_DIR/manifest.yaml" ] || die "no manifest.yaml in $BMODELS_DIR (--bmodels DIR)"
if [ "${#BMODELS[@]}" = 0 ]; then
    msg="no *.bmodel in $BMODELS_DIR: compile them first (bmodels/README.md) or pass --bmodels DIR"
    if [ "$DRY_RUN" = 1 ]; then warn "$msg"; else die "$msg"; fi
fi

# ---------------------------------------------------------------------------- user
step "service user $SERVICE_USER"
if id -u "$SERVICE_USER" >/dev/null 2>&1; then
    echo "user $SERVICE_USER exists"
else
    run useradd --system --user-group --home-dir "$DATA_DIR" --no-create-home \
        --shell /usr/sbin/nologin --comment "sophon-face daemon" "$SERVICE_USER"
fi
# The device nodes' groups (world-accessible nodes need none; root-only ones need a rule).
device_groups=()
tpu_nodes=(/dev/bm-tpu* /dev/bm-sophon*)
[ "${#tpu_nodes[@]}" -gt 0 ] \
    || warn "no /dev/bm-tpu* or /dev/bm-sophon* node: not an SE5, or the TPU driver is not loaded"
for node in "${tpu_nodes[@]}" /dev/bmdev-ctl /dev/ion /dev/jpu /dev/vpu /dev/bm-vpp; do
    [ -e "$node" ] || continue
    mode="$(stat -c %a "$node")"; group="$(stat -c %G "$node")"
    if [ $(( 8#$mode & 6 )) = 6 ]; then
        echo "$node: mode $mode, open to every user"
    elif [ "$group" != root ]; then
        echo "$node: mode $mode, group $group"
        device_groups+=("$group")
    else
        warn "$node is root-only (mode $mode, group root): $SERVICE_USER cannot open it;" \
             "give it a group with a udev rule, e.g. KERNEL==\"${node#/dev/}\", GROUP=\"video\", MODE=\"0660\""
    fi
done
if [ "${#device_groups[@]}" -gt 0 ]; then
    groups_csv="$(printf '%s\n' "${device_groups[@]}" | sort -u | paste -sd, -)"
    run usermod --append --groups "$groups_csv" "$SERVICE_USER"
fi

# ---------------------------------------------------------------------------- folders
step "folders"
run install -d -m 0755 "$PREFIX" "$PREFIX/bmodels" "$CONFIG_DIR"
run install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$DATA_DIR"
if [ -d "$(dirname "$REMOTE_DIR")" ] && [ "$(dirname "$REMOTE_DIR")" != / ]; then
    run install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$REMOTE_DIR" "$REMOTE_DIR/events"
else
    echo "$(dirname "$REMOTE_DIR") is absent: \"remote\" event images need it mounted (--remote-dir)"
fi

# ---------------------------------------------------------------------------- venv
step "virtual environment $VENV"
if [ ! -x "$VENV/bin/python" ]; then
    run "$PYTHON" -m venv --system-site-packages "$VENV"
elif grep -q '^include-system-site-packages = false' "$VENV/pyvenv.cfg" 2>/dev/null; then
    run "$PYTHON" -m venv --system-site-packages "$VENV"  # turns system packages on, keeps the rest
else
    echo "$VENV exists"
fi
run "${PIP[@]}" --upgrade "$PIP_PIN"
# Wheels only: a source build of numpy or aiohttp on the A53 cores takes hours.
run "${PIP[@]}" --only-binary=:all: "${PINS[@]}"
# The project itself, its dependencies being exactly the pins above (pip check verifies).
run "${PIP[@]}" --no-deps --force-reinstall "$SRC"
if [ -n "$SAIL_FILE" ]; then
    # --no-deps: whatever the wheel declares must not move the pins.
    run "${PIP[@]}" --no-deps --force-reinstall "$SAIL_FILE"
fi
run "$VENV/bin/python" -m pip check
# The PyPI package 'sophon' is an empty placeholder: ask for the real Engine.
run "$VENV/bin/python" -c 'import sophon.sail as s; assert hasattr(s, "Engine"), "not SAIL"' \
    || die "SAIL is not importable in $VENV: pass --sail-wheel (the SDK folder or the wheel)"

# ---------------------------------------------------------------------------- bmodels
step "bmodels in $PREFIX/bmodels"
for file in "$BMODELS_DIR/manifest.yaml" "${BMODELS[@]}"; do
    target="$PREFIX/bmodels/$(basename "$file")"
    if [ -f "$target" ] && cmp -s "$file" "$target"; then
        echo "$target is up to date"
    else
        run install -m 0644 "$file" "$target"
    fi
done

# ---------------------------------------------------------------------------- config
step "configuration $CONFIG_DIR"
if [ -e "$CONF" ]; then
    echo "keeping $CONF (compare with: scripts/install-se5.sh --print-conf)"
else
    conf_text="$(render_conf)"  # not a pipe: a failed render must not write an empty file
    write_file "$CONF" 0640 "root:$SERVICE_USER" <<<"$conf_text"
fi
if [ ! -e "$CONFIG_DIR/environment" ]; then
    write_file "$CONFIG_DIR/environment" 0644 root:root <<EOF
# Environment for the sophon-face unit (KEY=value lines), e.g. the SDK's library path if
# it differs from the unit's default:
# LD_LIBRARY_PATH=/opt/sophon/sophon-sail/lib:/opt/sophon/libsophon-current/lib
EOF
fi
run "$VENV/bin/sophon-face" check-config --config "$CONF"

# ---------------------------------------------------------------------------- unit
step "systemd unit $UNIT_DIR/$UNIT_NAME"
unit_text="$(render_unit)"
write_file "$UNIT_DIR/$UNIT_NAME" 0644 root:root <<<"$unit_text"
run systemctl daemon-reload
run systemctl enable "$UNIT_NAME"
if [ "$START" = 1 ]; then
    # Type=notify: this returns when the daemon has sent READY=1 (or has failed).
    run systemctl restart "$UNIT_NAME" \
        || die "sophon-face did not start: systemctl status sophon-face; journalctl -u sophon-face -n 50"
    port="$(awk '/^server:/ {s = 1; next} /^[^ #]/ {s = 0} s && $1 == "port:" {print $2; exit}' \
            "$CONF" 2>/dev/null || true)"
    run "$VENV/bin/sophon-face" health --url "http://127.0.0.1:${port:-5555}/health" \
        || die "sophon-face runs but is not healthy: journalctl -u sophon-face -n 50"
    step "done: systemctl status sophon-face; journalctl -u sophon-face -f"
else
    step "done (not started: systemctl start sophon-face)"
fi
