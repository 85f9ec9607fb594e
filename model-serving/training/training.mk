# Model training (issue 7): included by the root Makefile. PyTorch lives in its own venv, so
# `make test` never needs it; `make eval` runs the exported ONNX model in the reference venv.

TRAIN_VENV    := $(CACHE_DIR)/venv-train
TRAIN_REQ     := model-serving/training/requirements.txt
TRAIN_STAMP   := $(TRAIN_VENV)/.requirements-$(shell sha256sum $(TRAIN_REQ) | cut -c1-16)
TRAIN_PY      := $(TRAIN_VENV)/bin/python
TRAIN_THREADS ?= 2
TRAIN_ARGS    ?=
TRAINED_MODEL := $(ROOT)/model-serving/models/fashion-clip-mini
INIT_MODEL    := $(MODELS_DIR)/fashion-clip-mini-init
EVAL_JSON     := $(VAR)/eval/fashion-clip-mini.json
# Its int8 copy (`make quantize`, model-serving/tools/quantize.mk, which also makes `eval` build
# it): evaluated beside the fp32 model when present.
TRAINED_INT8  ?= $(MODELS_DIR)/fashion-clip-mini-int8

.PHONY: train-venv
train-venv: $(TRAIN_STAMP) ## PyTorch (CPU) environment for training (~5.6 GB incl. CUDA wheels, ~2 min)

$(TRAIN_STAMP): $(TRAIN_REQ)
	@[ -x $(TRAIN_PY) ] || $(PYTHON) -m venv $(TRAIN_VENV)
	$(TRAIN_PY) -m pip install --quiet --disable-pip-version-check -r $<
	@rm -f $(TRAIN_VENV)/.requirements-* && touch $@

.PHONY: train
train: system-deps $(TRAIN_STAMP) ## train the fashion CLIP model -> model-serving/models/fashion-clip-mini (TRAIN_THREADS=2)
	cd model-serving/training && TRAIN_THREADS=$(TRAIN_THREADS) $(TRAIN_PY) train.py \
	  --dataset-dir $(DATASET_DIR) --out $(TRAINED_MODEL) --init-out $(INIT_MODEL) $(TRAIN_ARGS)

.PHONY: eval
eval: system-deps $(VENV_STAMP) $(TINY_MODEL)/model.json ## measure the trained model (fp32, int8) vs random ones on the validation split
	cd model-serving/training && $(VPY) evaluate.py --dataset-dir $(DATASET_DIR) \
	  --model trained=$(TRAINED_MODEL) --model trained-int8=$(TRAINED_INT8) \
	  --model random-init=$(INIT_MODEL) --model tiny=$(TINY_MODEL) \
	  --json $(EVAL_JSON)
