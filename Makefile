# The two set-up commands of the README: `make demo` and `make test`. Both create the
# virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
# On a CPU machine torch 2.13.0 installs from local disk; on a GPU machine the same pin
# pulls the matching CUDA build. Override with `make TORCH_SPEC=... test`.
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo venv clean bench

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	# OpenCLIP, only for the converter's equivalence tests: without its dependencies, since
	# its torchvision requirement pulls a CUDA build that breaks beside CPU torch (the tests
	# import it without torchvision). Optional: the tests skip when it is absent. ftfy goes
	# first: a pip install after open_clip would make pip complain about its skipped deps.
	$(PY) -m pip install -q "ftfy>=6" && $(PY) -m pip install -q --no-deps "open_clip_torch==3.3.0" \
		|| echo "warning: open_clip_torch not installed; the OpenCLIP comparison tests will skip"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/attncollapse demo

clean:
	rm -rf $(VENV) runs/demo
