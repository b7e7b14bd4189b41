# The two set-up commands of the README: `make demo` and `make test`. Both create the
# virtual environment on first use: `make demo` installs the package alone, `make test`
# adds the test extras (pytest, Ray, Lightning, accelerate, the trackers' libraries).
PYTHON ?= python3
VENV ?= .venv
# On a CPU machine torch 2.13.0 installs from local disk; on a GPU machine the same pin
# pulls the matching CUDA build. Override with `make TORCH_SPEC=... test`.
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
CORE := $(VENV)/.installed-core
TEST := $(VENV)/.installed-test

.PHONY: test demo venv clean bench

venv: $(CORE)

$(CORE): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e .
	@touch $(CORE)

# OpenCLIP serves only the converter's equivalence tests, installed without its
# dependencies: its torchvision requirement pulls a CUDA build that breaks beside CPU torch
# (the tests import it without torchvision) and ftfy goes first so that pip does not
# complain about the skipped ones. Optional: those tests skip when it is absent.
$(TEST): $(CORE)
	$(PY) -m pip install -q -e ".[test]"
	@$(PY) -m pip install -q "ftfy>=6" && $(PY) -m pip install -q --no-deps "open_clip_torch==3.3.0" \
		|| echo "warning: open_clip_torch not installed; the OpenCLIP comparison tests will skip"
	@touch $(TEST)

test: $(TEST)
	$(PY) -m pytest -q

demo: $(CORE)
	$(VENV)/bin/attncollapse demo

clean:
	rm -rf $(VENV) runs/demo
