# Submitting the pipeline to a Kubeflow Pipelines cluster; included by the main Makefile.
#   make submit KFP_HOST=http://localhost:8080 PRESET=full
#   make submit KFP_HOST=https://kfp.example.com PRESET=full SUBMIT_ARGS="--data s3://bucket/full --watch"
# The tasks use the images of this commit (make images; make push REGISTRY=... for a remote cluster).
# A token for the API comes from $KFP_TOKEN (kept off the command line); see `scenesearch submit --help`.

KFP_HOST ?=
SUBMIT_ARGS ?=

.PHONY: submit submit-host

submit: submit-host setup ## submit the pipeline to Kubeflow Pipelines (make submit KFP_HOST=https://... PRESET=full)
	$(VENV)/bin/scenesearch submit --preset $(PRESET) --host $(KFP_HOST) \
		--set cluster.image_tag=$(IMAGE_TAG) $(if $(REGISTRY),--set cluster.image_registry=$(REGISTRY)) $(SUBMIT_ARGS)

# Listed before setup, so that a missing host is reported before anything is installed.
submit-host:
	@if [ -z "$(KFP_HOST)" ]; then echo "make submit needs KFP_HOST, the Kubeflow Pipelines address, e.g. make submit KFP_HOST=http://localhost:8080 PRESET=full" >&2; exit 1; fi
