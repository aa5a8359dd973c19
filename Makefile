# Two commands do all set-up on a fresh machine with Python 3.11:
#   make demo   runs the main job        make test   runs the test suite
# Each creates or refreshes .venv. TORCH_SPEC chooses the torch build installed when the venv
# has none (the default is the CPU wheel; an unpinned torch would pull a multi-GB CUDA build).
# FBGEMM_SPEC / TORCHREC_SPEC: the TorchRec pair of model.embedding.backend=torchrec, which must
# match the torch build; the default is the CPU pair for torch 2.13.0, installed with --no-deps
# (torchrec declares a CUDA fbgemm-gpu; its pure-Python dependencies come from the [torchrec]
# extra). GPU builds (a CUDA torch 2.13.0 in TORCH_SPEC): FBGEMM_SPEC='fbgemm-gpu==1.8.0', with
# the --index-url of torch's CUDA variant when it is not PyPI's default (README: which pair goes
# with which torch); FBGEMM_SPEC= skips them.
PYTHON ?= python3.11
TORCH_SPEC ?= torch==2.13.0
FBGEMM_SPEC ?= fbgemm-gpu-cpu==1.8.0
TORCHREC_SPEC ?= torchrec==1.8.0
VENV := .venv
STAMP := $(VENV)/.hmoe-installed

.PHONY: venv test test-fast test-load browser-test lint demo clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -c "import torch" 2>/dev/null || $(VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	test -z "$(FBGEMM_SPEC)" || $(VENV)/bin/python -m pip install -q --no-deps $(FBGEMM_SPEC) $(TORCHREC_SPEC)
	$(VENV)/bin/python -m pip install -q -e ".[dev,torchrec]"
	touch $(STAMP)

test: venv
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/python -m pytest -q -m "not load"

test-fast: venv
	$(VENV)/bin/python -m pytest -q -m "not slow and not load"

# 8 hmoe train and 2 hmoe tune at once on one Ray cluster: ~20 min and most of the memory of a
# 2-core 24 GB machine, so it runs on demand, not in make test
test-load: venv
	$(VENV)/bin/python -m pytest -q -s -m load

# the MLflow UI check in headless Chromium (Debian's chromium package; the test skips without it)
browser-test: venv
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	$(VENV)/bin/python -m pytest -q tests/jobs/test_browser.py

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks

demo: venv
	$(VENV)/bin/hmoe demo

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
