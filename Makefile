# Thin wrapper around CMake; see README.md.
BUILD ?= build
ASAN_BUILD ?= build-asan
ARGS ?=
JOBS ?= $(shell nproc)

.PHONY: all deps test-deps build build-asan run test test-fast bench fuzz clean

all: build

deps:
	@scripts/install-deps.sh build

test-deps:
	@scripts/install-deps.sh test

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

build-asan: deps
	@cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DOPTIMD_SANITIZE=ON >/dev/null
	@cmake --build $(ASAN_BUILD) -j $(JOBS)

run: build
	$(BUILD)/server/optimd $(ARGS)

# The whole suite, then the whole suite again under ASan + UBSan (+ LSan).
test: test-deps build build-asan
	@echo "== test suite (release build) =="
	@ctest --test-dir $(BUILD) --output-on-failure --timeout 600
	@echo "== test suite (AddressSanitizer + UndefinedBehaviorSanitizer) =="
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  ctest --test-dir $(ASAN_BUILD) --output-on-failure --timeout 900

# The release suite only, for quick iteration.
test-fast: test-deps build
	@ctest --test-dir $(BUILD) --output-on-failure --timeout 600

# Kernels vs torch 1.13.1 and the bandwidth bound, then a full remote step vs
# torch's local step and an NNG echo, small-request latency and throughput
# with 1, 4 and 16 clients vs the echo, and daemon memory per parameter;
# ratios printed (docs/performance.md), and the aggregate gradient throughput
# of 1, 2, 4 workers on 1 and 2 servers. BENCH_QUICK=1: no 50M kernel sizes.
bench: test-deps build
	@bench/kernels.sh $(BUILD)
	@bench/remote.sh $(BUILD)
	@bench/latency.sh $(BUILD)
	@bench/memory.sh $(BUILD)
	@bench/workers.sh $(BUILD)

# A longer fuzz run of the request handler than the one in `make test`
# (FUZZ_SECONDS, default 600); a crash leaves its input in build/fuzz/crash-*.
FUZZ_SECONDS ?= 600
fuzz: test-deps build
	@OPTIMD_PLUGIN_DIR=$(BUILD)/plugins tests/fuzz/run.sh $(CURDIR) $(BUILD) $(FUZZ_SECONDS)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)

# Soak: 64 clients on 8 sessions for SOAK_SECONDS against the release build's
# daemon, then every session verified (tests/soak/soak.py; docs/operations.md).
# A 20 s run of it is part of `make test`.
SOAK_SECONDS ?= 300
.PHONY: soak
soak: test-deps build
	@OPTIMD_BIN=$(abspath $(BUILD))/server/optimd OPTIMD_PLUGIN_DIR=$(abspath $(BUILD))/plugins \
	  PYTHONPATH=tests/integration PYTHONDONTWRITEBYTECODE=1 \
	  /usr/bin/python3 tests/soak/soak.py --seconds $(SOAK_SECONDS) --clients 64
