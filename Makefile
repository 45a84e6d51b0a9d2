# Two commands do all the set-up: `make demo` and `make test` (each creates .venv when missing).
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   ?= .sora/demo

.PHONY: venv demo test test-fast lint clean bento

venv: $(STAMP)

# Reinstall when the lock or the dependency list changes. requirements.lock pins every package (generated
# from pyproject.toml, see its header; the images install the same versions); the project itself goes in
# editable without resolving anything, and `pip check` fails the install when pyproject.toml asks for a
# package the lock lacks (regenerate the lock).
LOCK := requirements.lock
$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade "pip>=24" >/dev/null
	$(BIN)/python -m pip install -r $(LOCK)
	$(BIN)/python -m pip install --no-deps -e '.[dev]'
	$(BIN)/python -m pip check
	@touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m sora.cli.demo --workdir $(DEMO)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

# The serving Bento (serving/bentofile.yaml): stage a build context with Sora's wheel inside it, then
# `bentoml build` there. Built from a fresh copy of the sources, so stale build/ output never leaks in.
BENTO_CTX ?= build/bento
bento: $(STAMP)
	rm -rf $(BENTO_CTX) && mkdir -p $(BENTO_CTX)/src $(BENTO_CTX)/wheels
	cp -R pyproject.toml README.md sora components pipelines serving $(BENTO_CTX)/src/
	cp serving/service.py serving/bentofile.yaml serving/requirements.txt $(BENTO_CTX)/
	$(abspath $(BIN))/python -m pip wheel --no-deps --no-build-isolation -q -w $(BENTO_CTX)/wheels $(BENTO_CTX)/src
	rm -rf $(BENTO_CTX)/src
	cd $(BENTO_CTX) && $(abspath $(BIN))/bentoml build

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf .sora .pytest_cache
