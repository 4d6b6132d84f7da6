# The two commands a fresh machine needs: `make serve` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
MODEL  ?= runwayml/stable-diffusion-v1-5
HOST   ?= 127.0.0.1
PORT   ?= 7860
# torch is installed on its own first so pip never resolves a surprise build of it.
TORCH  ?= torch==2.13.0

.PHONY: setup serve test test-fast lint plugin install-plugin system-deps clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

serve: setup
	$(PY) -m server --model "$(MODEL)" --host $(HOST) --port $(PORT) $(ARGS)

# Krita, Xvfb and imagemagick for the in-Krita tests; installed through apt when missing and we are root.
system-deps:
	@bash packaging/system-deps.sh

test: setup system-deps
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not krita and not gui" $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check .

plugin: setup
	$(PY) packaging/build_plugin.py

install-plugin: setup
	$(PY) packaging/build_plugin.py --install

clean:
	rm -rf dist build *.egg-info
