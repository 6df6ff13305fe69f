# Thin front end to CMake. Every target installs missing Debian packages first (.ci/deps).
BUILD ?= build
ASAN_BUILD ?= build-asan
JOBS ?= $(shell nproc)
PREFIX ?= /usr/local

.PHONY: all deps build test install demo sanitize lint format bench soak fuzz clean

all: build

deps:
	@.ci/deps

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# The executable, liblasync (.a, .so), lasync.h, lasync.pc, the Lua module (<libdir>/lua/5.4, on
# stock lua5.4's path) and the editor types under $(PREFIX); DESTDIR=/stage for packaging.
install: build
	cmake --install $(BUILD) --prefix $(PREFIX)

# The seed tutorial's lessons: first without network, then against the local test server.
demo: build
	$(BUILD)/lasync examples/seed.lua
	examples/with_server.sh $(BUILD)/lasync examples/fetch_seq_vs_gather.lua
	examples/with_server.sh $(BUILD)/lasync examples/fetch_json_posts.lua
	examples/with_server.sh $(BUILD)/lasync examples/crawl.lua examples/urls.txt

# The whole suite under AddressSanitizer + UndefinedBehaviorSanitizer, leak detection on.
sanitize: deps
	@.ci/deps clang libclang-rt-14-dev
	@CC=clang cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DLASYNC_SANITIZE=ON >/dev/null
	@cmake --build $(ASAN_BUILD) -j $(JOBS)
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j $(JOBS)

# Style: clang-format (the root .clang-format) and luacheck (.luacheckrc) over what is clean.
# Add a folder or file here once it passes; `make format` rewrites the C ones in place.
LINT_C = $(wildcard bindings/http/*.c bindings/http/*.h) bindings/io/buffer.c \
  spec/c/buffer_test.c
LINT_LUA = lua/lasync.lua lua/sync.lua lua/scope.lua lua/host.lua lua/http \
  spec/fetch_spec.lua spec/fetch_stream_spec.lua spec/fetch_faults_spec.lua \
  spec/fetch_retry_spec.lua spec/fetch_options_spec.lua
lint:
	@.ci/deps clang-format lua-check
	clang-format --dry-run --Werror $(LINT_C)
	luacheck -q $(LINT_LUA)

format:
	@.ci/deps clang-format
	clang-format -i $(LINT_C)

# Memcheck over the embedding tests, the allocation-failure sweep and a few core specs: invalid
# accesses, uninitialised reads and definite or possible leaks fail it (a few minutes at most).
VALGRIND = valgrind -q --error-exitcode=1 --leak-check=full --track-origins=yes
VALGRIND_SPECS = spec/sleep_spec.lua spec/gather_spec.lua spec/cancel_spec.lua spec/future_spec.lua spec/errors_spec.lua
valgrind: build
	@.ci/deps valgrind
	$(VALGRIND) $(BUILD)/embed_test
	$(VALGRIND) $(BUILD)/alloc_sweep
	$(VALGRIND) $(BUILD)/buffer_test
	$(VALGRIND) $(BUILD)/lasync /usr/bin/busted --output=plainTerminal $(VALGRIND_SPECS)

bench: build
	@.ci/deps time
	bench/run $(BUILD)

# Long checks, not in CI (issue 6; soak/README.md, fuzz/README.md).
soak: build
	@.ci/deps time
	soak/run $(BUILD)

fuzz: deps
	@.ci/deps clang libclang-rt-14-dev
	fuzz/run

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
