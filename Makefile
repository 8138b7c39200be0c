# The two commands a user needs: `make run` and `make test`. Everything else is a step of them.
JOBS ?= $(shell nproc)
BUILD ?= build
FUZZ_SECONDS ?= 20

.PHONY: all deps build asan fuzz-build run test unit unit-asan fuzz e2e lint format bench clean

all: build

deps:
	@scripts/install-deps

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

asan: deps
	@cmake -S . -B $(BUILD)/asan -DCMAKE_BUILD_TYPE=Debug -DPOLIS_SANITIZE=ON >/dev/null
	@cmake --build $(BUILD)/asan -j $(JOBS)

fuzz-build: deps
	@CC=clang cmake -S . -B $(BUILD)/fuzz -DCMAKE_BUILD_TYPE=Debug -DPOLIS_SANITIZE=ON -DPOLIS_FUZZ=ON >/dev/null
	@cmake --build $(BUILD)/fuzz -j $(JOBS)

# Start the gateway on the example configuration in front of two example services.
run: build
	@scripts/run-example $(BUILD)

unit: build
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

unit-asan: asan
	@cd $(BUILD)/asan && ctest --output-on-failure -j $(JOBS)

fuzz: fuzz-build
	@scripts/run-fuzzers $(BUILD)/fuzz $(FUZZ_SECONDS)

e2e: build asan
	@POLIS_BUILD=$(BUILD) /usr/bin/python3 -m pytest -q tests/e2e

lint:
	@scripts/lint

test: lint unit unit-asan fuzz e2e
	@echo "make test: all suites passed"

format:
	@clang-format -i $$(git ls-files '*.c' '*.h')

bench: build
	@scripts/install-deps --bench
	@POLIS_BIN=$(BUILD)/polis bench/compare

clean:
	rm -rf $(BUILD)
