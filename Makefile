# mmstream: `make demo` runs the main job on bundled data, `make test` runs the tests.
# Both set everything up first on a fresh machine (Debian packages, a venv, the CPU torch).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DEMO_DIR ?= build/demo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-deps demo test bench clean

system-deps:  ## ffmpeg (ground truth for tests, benchmarks) and the DejaVu font (T2Vid text pages)
	@if ! command -v ffmpeg >/dev/null 2>&1 || [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq ffmpeg fonts-dejavu-core >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1   # install and import together (issue 20: transformers' video processors need torchvision)
	$(PIP) install -q -e '.[test]'
	$(PIP) install -q --no-deps 'llama-index-core==0.14.25'   # only for the NLTK punkt_tab data its wheel carries (T2Vid pages)
	touch $@

setup: system-deps $(VENV)/.installed

demo: setup  ## build the demo data, then stream + convert + filter + cache it and print a summary
	$(PY) -m mmstream.demo $(DEMO_DIR)
	$(VENV)/bin/mmstream inspect $(DEMO_DIR)/demo.yaml --workers 2 --limit 3
	$(VENV)/bin/mmstream cache $(DEMO_DIR)/demo.yaml --output $(DEMO_DIR)/cache --workers 2
	$(VENV)/bin/mmstream verify $(DEMO_DIR)/cache

test: setup  ## two test processes (clusters, kills and /dev/shm counts run one after another: conftest.py)
	$(PY) -m pytest -q -n 2 --dist loadgroup

clean:
	rm -rf build demo_out .pytest_cache
