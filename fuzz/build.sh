#!/usr/bin/env bash
# fuzz/build.sh [OUT_DIR]   (default build-fuzz)
#
# Builds the libFuzzer targets (fuzz/fuzz_*.c) with Debian's clang: the lasync sources
# (bindings/**/*.c, host/embed.c and lua/*.lua embedded the way CMake embeds them) compiled with
# -fsanitize=fuzzer-no-link,address,undefined, and each target linked with -fsanitize=fuzzer.
# Needs clang and libclang-rt-14-dev (`make fuzz` installs them through .ci/deps).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:-$ROOT/build-fuzz}
CC=${FUZZ_CC:-clang}
mkdir -p "$OUT/obj"
OUT=$(cd "$OUT" && pwd)
command -v "$CC" >/dev/null || { echo "fuzz/build.sh: $CC not found (apt-get install clang libclang-rt-14-dev)" >&2; exit 2; }

SAN=(-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
CFLAGS=(-g -O1 -std=gnu11 -Wall -Wno-unused-parameter "${SAN[@]}")
# shellcheck disable=SC2207 # word lists from pkg-config
PKG_CFLAGS=($(pkg-config --cflags lua5.4 libuv libcurl))
# shellcheck disable=SC2207
PKG_LIBS=($(pkg-config --libs lua5.4 libuv) -ldl) # libcurl: loaded by the first fetch

# lua/*.lua precompiled into C arrays, by the same tool the CMake build runs (with its options).
mapfile -t LUA_SOURCES < <(find "$ROOT/lua" -name '*.lua' | sort)
"$CC" -O1 "${PKG_CFLAGS[@]}" -I"$ROOT/bindings" "$ROOT/cmake/embed_lua.c" "${PKG_LIBS[@]}" \
  -o "$OUT/embed_lua"
"$OUT/embed_lua" "$OUT/embedded.c" "$ROOT/lua" --chunkname host "=[lasync host]" \
  "${LUA_SOURCES[@]}"

objs=() pids=()
mapfile -t BINDINGS < <(find "$ROOT/bindings" -name '*.c' | sort)
# llhttp from Debian's node-llhttp, as the CMake build takes it.
LLHTTP=(/usr/share/llhttp/llhttp.c /usr/share/llhttp/api.c /usr/share/llhttp/http.c)
PKG_CFLAGS+=(-I/usr/share/include/llhttp)
for src in "${BINDINGS[@]}" "${LLHTTP[@]}" "$ROOT"/host/embed.c "$OUT/embedded.c"; do
  rel=${src#"$ROOT"/}
  rel=${rel#/usr/share/}
  obj=$OUT/obj/${rel//\//_}
  obj=${obj%.c}.o
  if [ ! -f "$obj" ] || [ "$src" -nt "$obj" ] || [ "$ROOT/bindings/private.h" -nt "$obj" ] ||
    [ "$ROOT/host/lasync.h" -nt "$obj" ]; then
    "$CC" "${CFLAGS[@]}" -fsanitize=fuzzer-no-link "${PKG_CFLAGS[@]}" -I"$ROOT/bindings" -I"$ROOT/host" \
      -c "$src" -o "$obj" &
    pids+=($!)
  fi
  objs+=("$obj")
done
for pid in "${pids[@]}"; do wait "$pid" || { echo "fuzz/build.sh: a compile failed" >&2; exit 1; }; done

for target in "$ROOT"/fuzz/fuzz_*.c; do
  name=$(basename "${target%.c}")
  "$CC" "${CFLAGS[@]}" -fsanitize=fuzzer "${PKG_CFLAGS[@]}" -I"$ROOT/host" "$target" "${objs[@]}" \
    "${PKG_LIBS[@]}" -lm -lpthread -o "$OUT/$name"
  echo "fuzz/build.sh: built $OUT/$name"
done
