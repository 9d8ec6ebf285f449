# teachkit: `make demo` runs the main job, `make test` runs the test suite.
# Both create a virtual environment in .venv on first use and install everything into it.

PYTHON_SYSTEM ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of PyTorch, from PyTorch's own index: on Linux, PyPI's wheel is the multi-GB CUDA build.
# Override to pick another build, e.g. make TORCH=torch TORCH_INDEX=https://pypi.org/simple demo
# Few retries: where that index is unreachable, pip falls back at once to the wheels its own config lists.
TORCH ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

# Use the offline dataset mirror when it sits beside the repository (as in CI).
SHARED_DATA := $(abspath ../shared/data)
ifneq ($(wildcard $(SHARED_DATA)),)
export TEACHKIT_DATA_DIR ?= $(SHARED_DATA)
endif
export TOKENIZERS_PARALLELISM ?= false
# PyTorch's threads wait without spinning, so a busy machine does not slow training several times over
# (teachkit/__init__.py sets the same at its first import; this also reaches kernels that import torch first).
ifeq ($(origin GOMP_SPINCOUNT),undefined)
export OMP_WAIT_POLICY ?= PASSIVE
endif

.PHONY: install demo smoke test lint app html export-html strip clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON_SYSTEM) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --retries 1 --timeout 20 "$(TORCH)" --index-url "$(TORCH_INDEX)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

# make demo makes the report afresh: it replaces an earlier demo's run (never a live one: that is refused).
demo: install
	$(PY) -m teachkit demo --overwrite

smoke: install
	$(PY) -m teachkit smoke

test: install
	$(PY) -m pytest

# Code style, checked by CI: the formatting ruff would give, and pyflakes/pycodestyle errors and import order.
lint: install
	$(VENV)/bin/ruff format --check
	$(VENV)/bin/ruff check

# The training playground as a web app (Voila), on this machine only. APP_PORT=... picks another port.
APP_PORT ?= 8866
app: install
	@echo "Training playground: open http://127.0.0.1:$(APP_PORT)/ in a browser (Ctrl-C here stops it)."
	$(VENV)/bin/voila notebooks/playground.ipynb --no-browser --port=$(APP_PORT) --Voila.ip=127.0.0.1

# Every course notebook executed top to bottom and exported to reports/html/, so an instructor can review
# every figure without running anything (TEACHKIT_FAST=1 make html: the quick version). The pages open
# offline and show what a learner saw (docs/html_export/nbconvert_config.json): live plots are drawn as
# static figures, each explorer leaves a snapshot of its view, the widget state is not kept, progress bars
# are plain text that shows where they ended (a widget bar would be frozen at 0%), and the template loads
# no script from a CDN. export-html does the same without `install`, with any jupyter:
#   make export-html JUPYTER="python -m jupyter" HTML_NOTEBOOKS=notebooks/02_masked_language_modelling.ipynb
HTML_DIR ?= reports/html
HTML_NOTEBOOKS ?= notebooks/[0-9][0-9]_*.ipynb
JUPYTER ?= $(VENV)/bin/jupyter
html: install
	$(MAKE) export-html

export-html:
	TEACHKIT_LIVE=static HF_DATASETS_DISABLE_PROGRESS_BARS=1 HF_HUB_DISABLE_PROGRESS_BARS=1 \
	$(JUPYTER) nbconvert --execute --to html --config docs/html_export/nbconvert_config.json \
		--output-dir "$(HTML_DIR)" $(HTML_NOTEBOOKS)

# Remove outputs and execution counts from the notebooks before committing (CI checks they are clean).
strip: install
	$(VENV)/bin/jupyter nbconvert --clear-output --inplace notebooks/*.ipynb

clean:
	rm -rf $(VENV) runs reports .pytest_cache
