# mmstream: `make demo` runs the main job on bundled data, `make test` runs the tests.
# Both set everything up first on a fresh machine (Debian packages, a venv, the CPU torch).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DEMO_DIR ?= build/demo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-deps demo test test-tf446 bench clean

# T2Vid's pinned transformers (4.46.1, the oldest pyproject.toml admits), with the tokenizers and
# huggingface_hub it needs, in a folder beside the venv: the venv keeps its own versions.
TF446 := build/tf446
TF446_PINS := transformers==4.46.1 tokenizers==0.20.3 huggingface_hub==0.26.5
# The adapters (Idefics3, MiniCPM-V) and the stream's token counts under 4.46.1. Deselected: two
# Qwen2-VL image sizes with a side under 28 px, which 4.46's image processor rejects (later
# versions resize them up, as mmstream counts).
TF446_TESTS := tests/test_idefics3_collator.py tests/test_idefics3_model.py tests/test_minicpmv_out.py \
	tests/test_models_tokens.py tests/test_models_format.py tests/test_stream_models.py tests/test_budget.py \
	--deselect 'tests/test_models_tokens.py::test_qwen_image_grid_matches_processor[30-20-3136-1003520]' \
	--deselect 'tests/test_models_tokens.py::test_qwen_image_grid_matches_processor[1000-10-3136-1003520]'

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
	$(MAKE) test-tf446

$(TF446)/.installed: $(VENV)/.installed
	rm -rf $(TF446)
	$(PIP) install -q --no-deps --target $(TF446) $(TF446_PINS)
	touch $@

test-tf446: setup $(TF446)/.installed  ## the adapter tests again under transformers 4.46.1 (T2Vid's pin)
	export PYTHONPATH=$(abspath $(TF446))$${PYTHONPATH:+:$$PYTHONPATH}; \
	$(PY) -c 'import transformers as t; assert t.__version__ == "4.46.1", t.__file__' && \
	$(PY) -m pytest -q -n 2 $(TF446_TESTS)

clean:
	rm -rf build demo_out .pytest_cache
