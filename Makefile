# The README's two set-up commands. `torch==2.13.0` is pinned so pip takes the CPU build from local disk
# (an unpinned torch pulls several GB of CUDA wheels).
PY ?= python3
PIP ?= $(PY) -m pip

.PHONY: demo test install install-test

install:
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e .

install-test:
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test]"

demo: install
	$(PY) -m wclab.demo --out demo_out

test: install-test
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15
