# The two commands the README leads with:
#   make test   create .venv if missing, install everything, run the test suite
#   make demo   create .venv if missing, install everything, run the main job
#   make lint   ruff (style) and import-linter (layer contracts)
# VENV can point elsewhere (CI uses a temporary one): make test VENV=/tmp/x/venv
# TESTS selects test files (make test TESTS="tests/test_eval_search.py").
# pytest's temporary files (~0.8 GB: SynthPS datasets, checkpoints) go to a fresh folder that is removed
# after the run, so `make test` leaves nothing in the system temp dir; PYTEST_BASETEMP=DIR keeps them
# there instead (pytest empties DIR first) to inspect a failure.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -q
TESTS ?= tests
PYTEST_BASETEMP ?=
DEMO_ARGS ?=

.PHONY: test demo install lint clean-venv

$(VENV)/.galw_d2_installed: setup.py tools/install_deps.sh tools/patch_detectron2_sdist.py
	@test -x $(PY) || python3 -m venv $(VENV)
	bash tools/install_deps.sh $(PY)
	@touch $@

install: $(VENV)/.galw_d2_installed

# pytest exits 5 when it collected no test: report it and fail rather than pass silently.
test: install
	@bt="$(PYTEST_BASETEMP)"; keep=1; \
	  if [ -z "$$bt" ]; then bt=$$(mktemp -d -t galw_d2_pytest.XXXXXX) || exit 1; keep=0; fi; \
	  $(PY) -m pytest $(PYTEST_ARGS) --basetemp="$$bt" $(TESTS); rc=$$?; \
	  if [ $$keep -eq 0 ]; then rm -rf "$$bt"; fi; \
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
