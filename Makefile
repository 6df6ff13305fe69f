# Thin front end to CMake. Every target installs missing Debian packages first (.ci/deps).
BUILD ?= build
ASAN_BUILD ?= build-asan
TSAN_BUILD ?= build-tsan
JOBS ?= $(shell nproc)
PREFIX ?= /usr/local

.PHONY: all deps build test install demo sanitize tsan valgrind lint format bench soak fuzz clean

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
	$(BUILD)/lasync examples/threads_ticker.lua
	examples/with_server.sh $(BUILD)/lasync examples/fetch_seq_vs_gather.lua
	examples/with_server.sh $(BUILD)/lasync examples/fetch_json_posts.lua
	examples/with_server.sh $(BUILD)/lasync examples/crawl.lua examples/urls.txt
	$(BUILD)/lasync examples/files_and_processes.lua
	$(BUILD)/lasync examples/summary.lua

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
  bindings/io/bytes.c spec/c/buffer_test.c spec/c/check.h spec/c/run_task.h \
  $(wildcard bindings/thread/*.c bindings/thread/*.h) host/work.c \
  spec/c/work_test.c host/lineedit.c host/lineedit.h host/signals.c host/libedit.c host/libedit.h \
  bindings/lasync.c bindings/core/gcpace.c bindings/core/timer.c bindings/core/revive.c \
  cmake/embed_lua.c bench/spawn_time.c
LINT_LUA = lua/lasync.lua lua/sync.lua lua/scope.lua lua/host.lua \
  lua/http/client.lua lua/http/options.lua lua/http/pool.lua \
  spec/fetch_spec.lua spec/fetch_stream_spec.lua spec/fetch_faults_spec.lua \
  spec/fetch_retry_spec.lua spec/fetch_options_spec.lua lua/thread.lua spec/thread_spec.lua \
  bench/threads.lua bench/tcp.lua spec/bytes_spec.lua examples/threads_ticker.lua \
  lua/repl.lua spec/repl_spec.lua spec/signals_spec.lua spec/support/pty.lua spec/startup_spec.lua \
  lua/http/server.lua lua/net.lua lua/fs.lua lua/process.lua spec/gcpace_spec.lua spec/timer_queue_spec.lua \
  spec/method_self_spec.lua spec/coroutine_spec.lua spec/memory_sweep_spec.lua spec/options_spec.lua
lint:
	@.ci/deps clang-format lua-check
	clang-format --dry-run --Werror $(LINT_C)
	luacheck -q $(LINT_LUA)

format:
	@.ci/deps clang-format
	clang-format -i $(LINT_C)

# Memcheck over the embedding tests, the allocation-failure sweep, the thread pool and a few core
# specs: invalid accesses, uninitialised reads and definite or possible leaks fail it (a few
# minutes at most). Thread specs tagged #timing race a worker against the loop's clock, which
# valgrind's serialised threads skew: they run everywhere else (make test, sanitize, tsan).
VALGRIND = valgrind -q --error-exitcode=1 --leak-check=full --track-origins=yes
VALGRIND_SPECS = spec/sleep_spec.lua spec/gather_spec.lua spec/cancel_spec.lua spec/future_spec.lua spec/errors_spec.lua \
  spec/server_spec.lua
valgrind: build
	@.ci/deps valgrind
	$(VALGRIND) $(BUILD)/embed_test
	$(VALGRIND) $(BUILD)/alloc_sweep
	$(VALGRIND) $(BUILD)/buffer_test
	WORK_TEST_NO_SPIN=1 $(VALGRIND) $(BUILD)/work_test
	LASYNC=$(BUILD)/lasync $(VALGRIND) $(BUILD)/lasync /usr/bin/busted --output=plainTerminal \
	  --exclude-tags=timing spec/thread_spec.lua
	$(VALGRIND) $(BUILD)/lasync /usr/bin/busted --output=plainTerminal $(VALGRIND_SPECS)

# ThreadSanitizer over what has threads: the thread specs, the C work-item test, and the first
# fetch, which loads libcurl on a thread of its own.
TSAN_SPECS = spec/thread_spec.lua spec/startup_spec.lua spec/fetch_spec.lua
tsan: deps
	@.ci/deps clang libclang-rt-14-dev
	@CC=clang cmake -S . -B $(TSAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DLASYNC_TSAN=ON >/dev/null
	@cmake --build $(TSAN_BUILD) -j $(JOBS) --target lasync work_test embed_test
	TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 $(TSAN_BUILD)/work_test
	TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 $(TSAN_BUILD)/embed_test futures
	TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 LASYNC=$(TSAN_BUILD)/lasync \
	  $(TSAN_BUILD)/lasync /usr/bin/busted --output=plainTerminal $(TSAN_SPECS)

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
	rm -rf $(BUILD) $(ASAN_BUILD) $(TSAN_BUILD)
