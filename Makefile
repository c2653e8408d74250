# envrun: convenience targets over CMake and the scripts in scripts/.
# `make demo` and `make test` work on a fresh Debian 12 machine as root:
# both install what is missing first (scripts/install-deps.sh).

BUILD        ?= build
BUILD_ASAN   ?= build-asan
BUILD_FUZZ   ?= build-fuzz
BUILD_RELEASE ?= build-release
SERVICES     ?= .tmp/services
FUZZ_SECONDS ?= 60
# Seconds each libFuzzer target runs in `make test` (the CI gate).
CI_FUZZ_SECONDS ?= 20
JOBS         ?= 2

# Source folders whose *.c/*.h clang-format checks (tests/fuzz/corpus holds
# seed inputs, not code).
FORMAT_DIRS = common schemas worker drivers bridge ctl tests
FORMAT_FILES = find $(FORMAT_DIRS) -path tests/fuzz/corpus -prune -o \
	-type f \( -name '*.c' -o -name '*.h' \) -print 2>/dev/null

.PHONY: all deps build demo test format fuzz bench soak clean

all: build

deps:
	bash scripts/install-deps.sh

build:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DER_FAULTS=OFF
	cmake --build $(BUILD) -j$(JOBS)

demo: deps build
	./$(BUILD)/envrunctl dev --demo

# The CI gate (.ci/run): every label but bench on the normal build, unit and
# integration again under gcc's ASan+UBSan, a Release (-O3) build of
# everything (its optimizer finds warnings the others do not), every
# libFuzzer target for CI_FUZZ_SECONDS (scripts/fuzz.sh), then the
# format check. Every
# stage runs even when an earlier one failed, so one run reports all of
# them; the throwaway services are stopped however the recipe ends.
# Test builds compile the fault points (-DER_FAULTS=ON) the fault-matrix
# test kills the worker at; `make build` (and so `make demo`) configures the
# same directory without them, as a release build.
test: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DER_FAULTS=ON
	cmake --build $(BUILD) -j$(JOBS)
	@set -u; failed=""; \
	trap 'bash scripts/test-services.sh stop $(SERVICES)' EXIT; \
	trap 'exit 130' INT TERM; \
	bash scripts/test-services.sh start $(SERVICES) || exit 1; \
	. $(SERVICES)/env; export ENVRUN_TEST_PG_URL; \
	echo "== ctest ($(BUILD), all labels but bench and soak)"; \
	ctest --test-dir $(BUILD) --output-on-failure -j$(JOBS) -LE 'bench|soak' \
		|| failed="$$failed ctest"; \
	echo "== ASan+UBSan build ($(BUILD_ASAN))"; \
	if CC=gcc cmake -S . -B $(BUILD_ASAN) -DCMAKE_BUILD_TYPE=Debug \
		-DER_SANITIZE=address,undefined -DER_FAULTS=ON \
		&& cmake --build $(BUILD_ASAN) -j$(JOBS); then \
		echo "== ctest ($(BUILD_ASAN), unit + integration)"; \
		ASAN_OPTIONS=detect_leaks=1 \
		UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		LSAN_OPTIONS=$$(test -f tests/lsan.supp && \
			echo suppressions=$$PWD/tests/lsan.supp) \
		ctest --test-dir $(BUILD_ASAN) --output-on-failure -j$(JOBS) \
			-L 'unit|integration' || failed="$$failed asan-ctest"; \
	else \
		failed="$$failed asan-build"; \
	fi; \
	echo "== Release build ($(BUILD_RELEASE), -O3: its warnings differ)"; \
	{ cmake -S . -B $(BUILD_RELEASE) -DCMAKE_BUILD_TYPE=Release \
		-DER_FAULTS=OFF && cmake --build $(BUILD_RELEASE) -j$(JOBS); } \
		|| failed="$$failed release-build"; \
	echo "== libFuzzer ($(BUILD_FUZZ), $(CI_FUZZ_SECONDS) s a target)"; \
	bash scripts/fuzz.sh $(BUILD_FUZZ) $(CI_FUZZ_SECONDS) $(JOBS) \
		|| failed="$$failed fuzz"; \
	echo "== clang-format --dry-run --Werror"; \
	$(FORMAT_FILES) | xargs -r clang-format --dry-run --Werror \
		|| failed="$$failed format"; \
	if [ -n "$$failed" ]; then \
		echo "make test: FAILED:$$failed"; exit 1; \
	fi; \
	echo "make test: all stages passed"

format:
	$(FORMAT_FILES) | xargs -r clang-format -i

# libFuzzer: every *_fuzz target for FUZZ_SECONDS on a copy of its corpus
# (new inputs land in the copy, not in tests/fuzz/corpus); crashing inputs
# stay in $(BUILD_FUZZ). scripts/fuzz.sh does it, for make test too.
fuzz: deps
	bash scripts/fuzz.sh $(BUILD_FUZZ) $(FUZZ_SECONDS) $(JOBS)

# Issue [7]'s table first (tests/bench/perf_bench.c: one worker, paced
# latencies, CPU, RSS and pgbench with the worker's statements), then the
# other benches. Their services are durable (ENVRUN_PG_DURABLE=1: fsync and
# synchronous_commit on) and live in a directory of their own, so a bench
# run leaves $(SERVICES) alone.
BENCH_SERVICES ?= .tmp/bench-services
BENCH_RUNS     ?= 2000
bench: deps build
	@set -u; failed=""; \
	trap 'bash scripts/test-services.sh stop $(BENCH_SERVICES)' EXIT; \
	trap 'exit 130' INT TERM; \
	ENVRUN_PG_DURABLE=1 bash scripts/test-services.sh start \
		$(BENCH_SERVICES) || exit 1; \
	. $(BENCH_SERVICES)/env; export ENVRUN_TEST_PG_URL; \
	echo "== perf_bench $(BENCH_RUNS)"; \
	./$(BUILD)/tests/perf_bench $(BENCH_RUNS) || failed="$$failed perf_bench"; \
	echo "== ctest ($(BUILD), label bench but perf_bench)"; \
	ctest --test-dir $(BUILD) --output-on-failure -L bench -E perf_bench \
		|| failed="$$failed ctest"; \
	if [ -n "$$failed" ]; then \
		echo "make bench: FAILED:$$failed"; exit 1; \
	fi

# Three workers, SOAK_SECONDS of mixed local and ssh runs with random
# SIGKILLs (tests/soak/); prints commands, results, duplicates and losses.
SOAK_SECONDS ?= 600
soak: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DER_FAULTS=ON
	cmake --build $(BUILD) -j$(JOBS)
	@set -u; \
	trap 'bash scripts/test-services.sh stop $(SERVICES)' EXIT; \
	bash scripts/test-services.sh start $(SERVICES) || exit 1; \
	. $(SERVICES)/env; export ENVRUN_TEST_PG_URL; \
	ENVRUN_TEST_SOAK_S=$(SOAK_SECONDS) \
		ctest --test-dir $(BUILD) --output-on-failure -V -L soak

clean:
	bash scripts/test-services.sh stop $(SERVICES)
	rm -rf $(BUILD) $(BUILD_ASAN) $(BUILD_FUZZ) .tmp
