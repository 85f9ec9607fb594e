# The backend's API contract, fuzzed by schemathesis against the running debug backend (included
# by the Makefile; part of `make test`). Its own venv, so the model tools' venv is untouched.

CONTRACT_DIR   := $(ROOT)/backend/contract
CONTRACT_VENV  := $(CACHE_DIR)/venv-contract
CONTRACT_STAMP := $(CONTRACT_VENV)/.requirements-$(shell sha256sum $(CONTRACT_DIR)/requirements.txt | cut -c1-16)
CONTRACT_SECS  ?= 180
TEST_EXTRA     += test-contract

$(CONTRACT_STAMP): $(CONTRACT_DIR)/requirements.txt
	@[ -x $(CONTRACT_VENV)/bin/python ] || $(PYTHON) -m venv $(CONTRACT_VENV)
	@$(CONTRACT_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r $<
	@rm -f $(CONTRACT_VENV)/.requirements-* && touch $@

.PHONY: test-contract
test-contract: $(ORT_LIB) $(TINY_MODEL)/model.json $(CONTRACT_STAMP) ## fuzz the backend's OpenAPI contract with schemathesis (every check, loopback only)
	$(MAKE) --no-print-directory build-tested
	ORT_DYLIB_PATH=$(ORT_DYLIB_PATH) $(PYTHON) $(CONTRACT_DIR)/contract_test.py --bin-dir $(TARGET_DIR)/debug \
	  --model-dir $(TINY_MODEL) --dataset-dir $(DATASET_DIR) \
	  --schemathesis $(CONTRACT_VENV)/bin/schemathesis --max-time $(CONTRACT_SECS)
