# teachkit: `make demo` runs the main job, `make test` runs the test suite.
# Both create a virtual environment in .venv on first use and install everything into it.

PYTHON_SYSTEM ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of PyTorch. Override to pick another build, e.g. make TORCH=torch demo
TORCH ?= torch==2.13.0

# Use the offline dataset mirror when it sits beside the repository (as in CI).
SHARED_DATA := $(abspath ../shared/data)
ifneq ($(wildcard $(SHARED_DATA)),)
export TEACHKIT_DATA_DIR ?= $(SHARED_DATA)
endif
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo smoke test clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON_SYSTEM) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

demo: install
	$(PY) -m teachkit demo

smoke: install
	$(PY) -m teachkit smoke

test: install
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs reports .pytest_cache
