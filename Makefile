# make run   installs what is missing, builds, runs the main job (DeepSeek-V3 dense decode preset)
# make test  installs what is missing, builds, runs every test: C++ through ctest, Python through
#            pytest on the flash_mla package installed into .venv, the C++ suites again under
#            ASan + UBSan for every ISA level (make sanitize), and a short fuzzing run (make fuzz)
BUILD_DIR ?= build
VENV ?= .venv
JOBS ?= $(shell nproc)

FUZZ_SECONDS ?= 20

.PHONY: all deps build python run test sanitize fuzz bench clean

all: build

deps:
	@bash scripts/install-deps.sh

build: deps
	@cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=Release >/dev/null
	@cmake --build $(BUILD_DIR) -j $(JOBS)

python: deps
	@bash scripts/setup-python.sh $(VENV)

run: build
	$(BUILD_DIR)/flashmla_cli --preset v3-decode-quick

# Tests run several processes at once, each with its OpenMP team: idle OpenMP threads sleep
# (OMP_WAIT_POLICY=passive) instead of spinning on the cores the other processes need.
test: export OMP_WAIT_POLICY ?= passive
test: build python
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS)
	FLASHMLA_BUILD_DIR=$(abspath $(BUILD_DIR)) $(VENV)/bin/python -m pytest tests/python -q
	@$(MAKE) --no-print-directory sanitize fuzz

# The C++ suites under AddressSanitizer + UndefinedBehaviorSanitizer, every ISA level (build-asan/).
sanitize: deps
	SAN_JOBS=$(JOBS) bash scripts/test-sanitizers.sh build-asan

# Every libFuzzer target for FUZZ_SECONDS seconds on its corpus (clang, ASan + UBSan; build-fuzz/).
fuzz: deps
	bash scripts/fuzz.sh $(FUZZ_SECONDS) build-fuzz

# Benchmark: every operation on the tests' grid and model presets, each microkernel, against the
# machine's measured DRAM bandwidth and matrix peak; table on stdout, CSV/JSON/PNG in bench_results/.
bench: build python
	$(VENV)/bin/python bench/run_bench.py --build-dir $(BUILD_DIR) --out bench_results

clean:
	rm -rf $(BUILD_DIR) $(VENV) build-asan build-fuzz
