# int8 model folders (model-serving/tools/quantize.py, onnxruntime.quantization): included by
# the root Makefile. The copies are served unchanged (same inputs and outputs, float32 embeddings);
# model.json says "precision": "int8" and how they were made.
#
#   static   (default) int8 weights and activations, activation ranges calibrated on development
#            (training-split) photos and captions from $(DATASET_DIR); QDQ, per-channel,
#            MatMul/Gemm/Conv/Relu only. Images/s vs fp32: trained model ~2.5x, ViT-B/32 ~4x;
#            caption R@10 and type P@10 within half a point (`make eval` shows both).
#   dynamic  no calibration; activations quantized at run time. Slower than static, and ORT's
#            ConvInteger makes the trained model's CNN ~7x slower than fp32.
# QUANTIZE_ARGS passes more options (quantize.py --help: --format, --no-per-channel, --op-types,
# --calibration-images, ...).

QUANTIZE_MODE ?= static
QUANTIZE_ARGS ?=
QUANTIZE_PY   := model-serving/tools/quantize.py
TRAINED_MODEL ?= $(ROOT)/model-serving/models/fashion-clip-mini
TRAINED_INT8  := $(MODELS_DIR)/fashion-clip-mini-int8
BENCH_INT8    := $(MODELS_DIR)/vit-b32-random-int8
# What the folders are made with: the script, the split and transform it imports, and the
# options (a stamp per QUANTIZE_MODE + QUANTIZE_ARGS, so that changing them remakes the folders).
QUANTIZE_STAMP := $(VAR)/.quantize-$(shell echo '$(QUANTIZE_MODE) $(QUANTIZE_ARGS)' | sha256sum | cut -c1-16)
QUANTIZE_DEPS  := $(QUANTIZE_PY) model-serving/training/data.py model-serving/tools/reference.py $(QUANTIZE_STAMP)
QUANTIZE_CMD   = $(VPY) $(QUANTIZE_PY) --mode $(QUANTIZE_MODE) --dataset-dir $(DATASET_DIR) $(QUANTIZE_ARGS)

.PHONY: quantize
quantize: $(TRAINED_INT8)/model.json $(BENCH_INT8)/model.json ## int8 copies of the trained and bench models -> var/models/*-int8 (QUANTIZE_MODE=static|dynamic)

$(QUANTIZE_STAMP):
	@mkdir -p $(@D) && rm -f $(VAR)/.quantize-* && touch $@

$(TRAINED_INT8)/model.json: $(TRAINED_MODEL)/model.json $(TRAINED_MODEL)/vision_model.onnx \
    $(TRAINED_MODEL)/text_model.onnx $(QUANTIZE_DEPS) | $(VENV_STAMP)
	$(QUANTIZE_CMD) --src $(TRAINED_MODEL) --out $(TRAINED_INT8)

$(BENCH_INT8)/model.json: $(BENCH_MODEL)/model.json $(QUANTIZE_DEPS) | $(VENV_STAMP)
	$(QUANTIZE_CMD) --src $(BENCH_MODEL) --out $(BENCH_INT8)

# `make eval` measures the trained model's int8 copy beside it (training.mk passes it).
eval: $(TRAINED_INT8)/model.json
