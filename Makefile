# One venv, pinned by constraints.txt; every target works from a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RAY_STAMP := $(VENV)/.installed-ray
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export SDL_VIDEODRIVER := offscreen
export OMP_NUM_THREADS ?= 2

.PHONY: setup test lint demo checkpoint clean

setup: $(STAMP)

$(STAMP): requirements.txt constraints.txt setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt -c constraints.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

# The optional Ray extra (distributed rollouts): the tests run them, the demo does not need it.
$(RAY_STAMP): $(STAMP)
	$(BIN)/pip install -q -c constraints.txt -e ".[ray]"
	touch $(RAY_STAMP)

lint: setup
	$(BIN)/ruff check vla_driver test launch trt setup.py

test: setup $(RAY_STAMP) lint
	$(BIN)/python -m pytest -q test

demo: setup
	$(BIN)/vla-driver demo

checkpoint: setup
	$(BIN)/vla-driver train-sft --out vla_driver/assets/default_checkpoint

clean:
	rm -rf $(VENV) build *.egg-info
