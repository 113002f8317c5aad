# MinD-Vis in Python. Two commands matter: `make demo` and `make test`.
PY      := .venv/bin/python
STAMP   := .venv/.installed

.PHONY: install test demo lint clean-demo

install: $(STAMP)

# Re-runs only when requirements change; pip takes torch/torchvision from the local disk when it can.
$(STAMP): requirements.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q --durations=10 tests

lint: $(STAMP)
	$(PY) -m ruff check code tests benchmarks
	$(PY) -m ruff format --check code tests benchmarks

demo: $(STAMP)
	PYTHONPATH=code $(PY) -m demo

clean-demo:
	rm -rf results/demo data/synthetic/demo data/synthetic/demo-* data/synthetic/hard data/synthetic/hard-* pretrains/demo
