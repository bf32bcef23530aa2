# The MLflow UI check: screenshots of the runs table and the latest parent run, taken by headless
# Chromium (Debian's `chromium`) from a throwaway `mlflow ui` on a free loopback port. Look at the
# PNGs: the page is the runs table (not GenAI traces), the Dataset and Models columns are filled.
#   make ui-screenshot                              the Makefile's store (after `make run`)
#   make ui-screenshot UI_STORE=sqlite:////abs/mlruns.db UI_EXPERIMENT=name
#   make ui-screenshot UI_DEMO=1                    a small demo store built under $(UI_SHOTS)/demo

UI_STORE ?= sqlite:///$(CURDIR)/mlruns.db
UI_EXPERIMENT ?= scenesearch
UI_SHOTS ?= runs/ui_shots
UI_DEMO ?=

.PHONY: ui-screenshot

ui-screenshot: setup ## PNGs of the MLflow UI's runs table and parent run into runs/ui_shots (UI_DEMO=1: a demo store)
	$(PY) infra/tools/ui_screenshot.py --store '$(UI_STORE)' --experiment '$(UI_EXPERIMENT)' --out '$(UI_SHOTS)' $(if $(UI_DEMO),--demo)
