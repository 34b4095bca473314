# The two commands of the README.  Both start from nothing but the checkout and
# Python 3.11: they create .venv and install gzjax into it.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo_workdir
# A few thousand galaxies: about a minute of rendering on 2 cores.
DEMO_GALAXIES ?= 3000
DEMO_RUN = --config=configs/quickstart.py --workdir=$(DEMO_DIR)/quickstart \
    --config.data_dir=$(DEMO_DIR)/data

.PHONY: demo test install clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: install
	$(BIN)/python -m gzjax.data.build --config=synthetic --data_dir=$(DEMO_DIR)/data \
	    --num_labelled=$(DEMO_GALAXIES) --num_test=300
	$(BIN)/python tools/show_galaxies.py --config=synthetic --data_dir=$(DEMO_DIR)/data \
	    --out=$(DEMO_DIR)/galaxies.png
	$(BIN)/python -m gzjax.main $(DEMO_RUN)
	$(BIN)/python -m gzjax.main $(DEMO_RUN) --mode=evaluate --checkpoint=best --tta
	$(BIN)/python -m gzjax.main $(DEMO_RUN) --mode=predict --checkpoint=best --tta \
	    --output=$(DEMO_DIR)/predictions.csv
	@echo "Results in $(DEMO_DIR)/: galaxies.png, quickstart/plots/*.png," \
	    "quickstart/eval_validation.json, predictions.csv"

test: install
	$(BIN)/python -m pytest -q -n 2

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache *.egg-info
