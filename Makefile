# The two commands the README leads with:
#   make test   create .venv if missing, install everything, run the test suite
#   make demo   create .venv if missing, install everything, run the main job
#   make lint   ruff (style) and import-linter (layer contracts)
# VENV can point elsewhere (CI uses a temporary one): make test VENV=/tmp/x/venv
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -q
DEMO_ARGS ?=

.PHONY: test demo install lint clean-venv

$(VENV)/.galw_d2_installed: setup.py tools/install_deps.sh tools/patch_detectron2_sdist.py
	@test -x $(PY) || python3 -m venv $(VENV)
	bash tools/install_deps.sh $(PY)
	@touch $@

install: $(VENV)/.galw_d2_installed

# pytest exits 5 when it collected no test: report it and fail rather than pass silently.
test: install
	@$(PY) -m pytest $(PYTEST_ARGS) tests; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5)" >&2; fi; exit $$rc

# Style (ruff, pyproject.toml) and the layer contracts (import-linter); .ci/run runs it before the tests.
lint: install
	$(VENV)/bin/ruff check galw_d2 tools tests
	$(VENV)/bin/ruff format --check galw_d2 tools tests
	$(VENV)/bin/lint-imports

demo: install
	$(PY) tools/demo.py $(DEMO_ARGS)

clean-venv:
	rm -rf $(VENV)
