# The two commands a fresh machine needs: `make serve` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The server's own default (server/app.py DEFAULT_MODEL); downloads on first use. MODEL=tiny-sd: offline demo.
MODEL  ?= stable-diffusion-v1-5/stable-diffusion-v1-5
HOST   ?= 127.0.0.1
PORT   ?= 7860
# torch is installed on its own first so pip never resolves a surprise build of it.
TORCH  ?= torch==2.13.0

.PHONY: setup serve test test-fast test-krita lint plugin install-plugin screenshot maps-picture bench eval system-deps clean

$(VENV)/.installed: pyproject.toml
	@PYTHON="$(PYTHON)" bash packaging/system-deps.sh --python-only
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

serve: setup
	$(PY) -m server --model "$(MODEL)" --host $(HOST) --port $(PORT) $(ARGS)

# Krita, Xvfb and ImageMagick for the in-Krita, end-to-end and GUI tests; through apt when missing and allowed.
system-deps:
	@PYTHON="$(PYTHON)" bash packaging/system-deps.sh

test: system-deps setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not krita and not gui" $(PYTEST_ARGS)

test-krita: system-deps setup
	$(PY) -m pytest -q -m "krita or gui" $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check .

plugin: setup
	$(PY) packaging/build_plugin.py

install-plugin: setup
	$(PY) packaging/build_plugin.py --install

# Regenerates docs/docker.png: the GUI test's screenshot of Krita under Xvfb with the docker.
screenshot: system-deps setup
	DIFFDIFF_SCREENSHOT=docs/docker.png $(PY) -m pytest -q -m gui tests/e2e/test_gui.py

# Regenerates docs/maps.png: a rendered scene's depth map and two transforms, grabbed from Krita's canvas.
maps-picture: system-deps setup
	$(PY) docs/make_maps_picture.py --out docs/maps.png

bench: setup
	$(PY) bench/pipeline_cost.py --quick
	$(PY) bench/server_overhead.py --quick

eval: setup
	$(PY) -m eval.adherence

clean:
	rm -rf dist build *.egg-info
