# edgetrunc: `make demo` runs the whole pipeline, `make test` runs the test suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast train train-qat convert bench clean
.PHONY: qemu arm-parity

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,npu]"
	@touch $(STAMP)

demo: install
	$(PY) scripts/demo.py

# Both test targets run on TEST_WORKERS processes (pytest-xdist), one test file per process at a
# time so a file's shared fixtures are built once; TEST_WORKERS=0 runs in this process alone.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: install
	$(PYTEST)

# qemu-user-static runs the aarch64 tests (tests/test_arm.py) and `make arm-parity`: installed
# with apt-get when missing and root (quick when present); without it those tests are skipped.
test: qemu
qemu:
	@command -v qemu-aarch64-static >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq qemu-user-static >/dev/null; } \
		|| echo "qemu-user-static unavailable (needs root and apt-get): emulated aarch64 tests are skipped"

# Every artifact in models/ under emulated aarch64 (Cortex-A76 and Cortex-A53 profiles), compared
# with Keras and with x86-64 (docs/PARITY.md); the arm64 sysroot is cached in .aarch64/.
arm-parity: install qemu
	$(PY) scripts/arm_parity.py --kernels $(ARM_ARTIFACTS)

# The quick loop: every test not marked slow (under 3 minutes on 2 cores).
test-fast: install
	$(PYTEST) -m "not slow"

# Reproduces the shipped detector models/tlunet.keras and its training record.
# The shipped model was trained with TensorFlow's oneDNN kernels off (their rounding differs);
# drop TF_ENABLE_ONEDNN_OPTS=0 for about 2.5x faster training with other rounding.
train: install
	TF_ENABLE_ONEDNN_OPTS=0 $(PY) -m edgetrunc train --model tlunet --covers embedded --payload 0.4 --seed 0 \
		--stride 64 --curriculum 1.0,0.7,0.4 --stage-epochs 5 --epochs 400 --patience 20 \
		--frozen-bn 0.2 --time-budget 38 --out models/tlunet.keras --force

convert: install
	$(PY) scripts/convert.py models/tlunet.keras --out models --force
	$(PY) scripts/convert.py models/integer/tlunet_qat.keras --out models/integer --tflite int8-full --onnx "" --target ethos-u --force
	$(PY) scripts/convert.py models/integer/tlunet_qat.keras --out models/integer/cpu --tflite int8-full --onnx int8-full --target cpu --force

# Quantization-aware fine-tuning of the shipped detector, for the full-integer artifact of
# NPUs and microcontrollers (models/integer/, docs/INTEGER.md).
train-qat: install
	$(PY) -m edgetrunc train --qat --init models/tlunet.keras --out models/integer/tlunet_qat.keras \
		--qat-epochs 3 --qat-pairs 512 --qat-lr 1e-4 --seed 0 --force

# Every benchmark section of BENCHMARKS.md, one entry point (`python -m scripts.benchmarks --list`
# names them; `--quick` is a smoke test into a copy).
bench: install
	$(PY) -m scripts.benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
