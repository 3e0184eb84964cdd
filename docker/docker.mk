# Docker targets, included by the Makefile. docs/docker.md explains them.
#
#   make docker-build                       image spd-bench:latest on the CUDA base
#   make reproduce-table1                   table 1 on this host's GPUs -> results/table1.md
#   make reproduce-table2 GLUE_DIR=/data/glue_data
#   make docker-smoke DOCKER=podman DOCKER_GPUS='--device nvidia.com/gpu=all'
#
# Variables (all overridable on the command line):
DOCKER       ?= docker
DOCKER_IMAGE ?= spd-bench:latest
# Empty: the Dockerfile's default, pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime.
BASE_IMAGE   ?=
DOCKER_GPUS  ?= --gpus all
DOCKER_SHM   ?= 8g
HF_CACHE     ?= $(HOME)/.cache/huggingface
SPD_CACHE    ?= $(HOME)/.cache/spd-bench
RESULTS_DIR  ?= $(CURDIR)/results
# Run as the invoking user so results and caches stay theirs; root is mapped to the image's uid 1000.
DOCKER_USER  ?= $(shell u=$$(id -u); if [ "$$u" = 0 ]; then echo 1000:1000; else echo "$$u:$$(id -g)"; fi)
# A GLUE data directory (glue_data layout) to mount read-only; without one the tables read GLUE
# from the Hugging Face hub through the HF cache.
GLUE_DIR     ?=

ifneq ($(strip $(GLUE_DIR)),)
DOCKER_GLUE := -v "$(abspath $(GLUE_DIR)):/data/glue:ro" -e GLUE_DIR=/data/glue
GLUE_FLAG   := --glue-dir /data/glue
else
DOCKER_GLUE :=
GLUE_FLAG   := --glue-dir hub
endif

# podman stores images in OCI format by default, which drops SHELL; docker ignores the flag's absence.
DOCKER_BUILD_FLAGS ?= $(if $(findstring podman,$(DOCKER)),--format docker)

DOCKER_RUN = $(DOCKER) run --rm $(DOCKER_GPUS) --shm-size $(DOCKER_SHM) --user $(DOCKER_USER) \
	-v "$(HF_CACHE):/cache/huggingface" -v "$(SPD_CACHE):/cache/spd-bench" -v "$(RESULTS_DIR):/results" \
	$(DOCKER_GLUE) $(foreach v,HF_HUB_OFFLINE HF_DATASETS_OFFLINE HF_TOKEN,$(if $($(v)),-e $(v)))

.PHONY: docker-build docker-smoke reproduce-table1 reproduce-table2 reproduce-table3 container-smoke hadolint docker-dirs

docker-build:  ## build the spd-bench:latest image on the CUDA PyTorch base (docs/docker.md)
	DOCKER_BUILDKIT=1 $(DOCKER) build $(DOCKER_BUILD_FLAGS) $(if $(strip $(BASE_IMAGE)),--build-arg BASE_IMAGE=$(BASE_IMAGE)) \
		--build-arg GIT_SHA=$$(git rev-parse --verify HEAD 2>/dev/null) -f docker/Dockerfile -t $(DOCKER_IMAGE) .

# Made on the host first: a directory docker creates for a bind mount belongs to root. Run as
# root, make hands them to DOCKER_USER (root keeps access anyway).
docker-dirs:
	mkdir -p "$(RESULTS_DIR)" "$(HF_CACHE)" "$(SPD_CACHE)"
	if [ "$$(id -u)" = 0 ]; then chown -R $(DOCKER_USER) "$(RESULTS_DIR)" "$(HF_CACHE)" "$(SPD_CACHE)"; fi

docker-smoke: docker-build docker-dirs  ## run the smoke grid in the image on this host's GPUs (--gpus all)
	$(DOCKER_RUN) --entrypoint python3 $(DOCKER_IMAGE) -c \
		"import torch; assert torch.cuda.is_available(), 'no GPU visible in the container'; print('GPU:', torch.cuda.get_device_name(0))"
	$(DOCKER_RUN) $(DOCKER_IMAGE) run configs/smoke.yaml --out /results/smoke
	for n in 1 2 3; do $(DOCKER_RUN) $(DOCKER_IMAGE) table $$n /results/smoke --out /results/smoke/table$$n.md || exit 1; done

# $(call reproduce,N): run configs/tableN.yaml in the image, then render table N.
define reproduce
	$(DOCKER_RUN) $(DOCKER_IMAGE) run configs/table$(1).yaml --out /results/table$(1) $(GLUE_FLAG)
	$(DOCKER_RUN) $(DOCKER_IMAGE) table $(1) /results/table$(1) --out /results/table$(1).md
	@echo "table $(1) -> $(RESULTS_DIR)/table$(1).md"
endef

reproduce-table1: docker-build docker-dirs  ## paper table 1 on this host's GPUs -> results/table1.md
	$(call reproduce,1)

reproduce-table2: docker-build docker-dirs  ## paper table 2 on this host's GPUs -> results/table2.md
	$(call reproduce,2)

reproduce-table3: docker-build docker-dirs  ## paper table 3 on this host's GPUs -> results/table3.md
	$(call reproduce,3)

container-smoke:  ## build the image on a CPU stand-in base with podman and run the smoke grid in it (root; no GPU)
	bash docker/container-smoke.sh

hadolint: $(STAMP)  ## lint docker/Dockerfile with hadolint
	$(BIN)/hadolint docker/Dockerfile
