# Two commands do all set-up on a fresh clone:
#   make reproduce   run every notebook in order (executed copies in build/, results in data/results/)
#   make test        run the whole test suite (notebooks at smoke parameters included)
# Both create .venv/ if it is missing and install the project into it.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.vitprune-installed
KERNEL := vitprune-lite

.PHONY: setup reproduce reproduce-lab reproduce-extended test chromium lab train train-v1 bench clean-build report

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[notebooks,test]"
	# A one-line .pth file makes a bare `import timm` work in this environment too (see vitprune_lite/compat.py).
	echo "import vitprune_lite.compat" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/vitprune_lite_compat.pth"
	# The notebooks' kernel lives inside the environment: papermill and JupyterLab find it with no global set-up.
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (vitprune_lite)" > /dev/null
	touch $(STAMP)

reproduce: setup
	$(PY) -m vitprune_lite reproduce

# Every notebook at its `lab` preset, written under build/lab/ (the committed results stay); the
# run times are recorded in data/run_times.json beside the full run's. On benchmark v2 this takes
# about 8 minutes on 2 cores.
reproduce-lab: setup
	VITPRUNE_OUT=build/lab $(PY) -m vitprune_lite reproduce -p PRESET=lab

# Every notebook at its `extended` preset, written under build/extended/ (the committed results stay):
# the full run with notebook 02's sweep over all thirteen criteria on every test image and denser,
# longer latency profiles in notebook 03; about 1.5x the full run's time.
reproduce-extended: setup
	VITPRUNE_OUT=build/extended $(PY) -m vitprune_lite reproduce -p PRESET=extended

test: setup chromium
	$(PY) -m pytest

# The HTML site's test opens it in headless Chromium. Where Chromium is missing and we are root on
# Debian or Ubuntu (as in CI containers), install it from the distribution's packages, quietly;
# anywhere else do nothing (that one test then skips and says why).
chromium:
	@if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 \
	    && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Chromium for the HTML test (apt-get, Debian/Ubuntu)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  { apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
	    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; }; } \
	    || echo "note: Chromium could not be installed; the HTML browser test will be skipped"; \
	fi

# JupyterLab refuses to start as root (the usual user in containers) unless told; say so and start anyway.
lab: setup
	@if [ "$$(id -u)" = 0 ]; then \
	  echo "note: running as root (usual in containers): starting JupyterLab with --allow-root"; \
	  $(VENV)/bin/jupyter lab --allow-root notebooks/; \
	else \
	  $(VENV)/bin/jupyter lab notebooks/; \
	fi

# Rebuild the default (benchmark v2) base-model checkpoint, data/base_vit_v2.safetensors, from
# scratch: about an hour on 2 cores.
train: setup
	$(PY) -m vitprune_lite train --benchmark v2 --overwrite-shipped

# Rebuild benchmark v1's small base model (data/base_vit.safetensors): a few minutes.
train-v1: setup
	$(PY) -m vitprune_lite train --benchmark v1 --overwrite-shipped

# Speed and memory benchmarks (not tests; tens of minutes on 2 cores); each writes data/benchmarks/<name>.json.
bench: setup
	$(PY) -m vitprune_lite.benchmarks.surgery_speedup
	$(PY) -m vitprune_lite.benchmarks.importance_bench
	$(PY) -m vitprune_lite.benchmarks.toast_bench
	$(PY) -m vitprune_lite.benchmarks.peers_bench
	$(PY) -m vitprune_lite.benchmarks.latency_bench
	$(PY) -m vitprune_lite.benchmarks.tome_bench
	$(PY) -m vitprune_lite.benchmarks.latency_predictor
	$(PY) -m vitprune_lite.benchmarks.reference_modes
	$(PY) -m vitprune_lite.benchmarks.benchmark_v2

clean-build:
	rm -rf build/

# Rewrite README.md's results section from data/results/*.json (the tests fail while it is stale).
report: setup
	$(PY) -m vitprune_lite report
