#!/usr/bin/env bash
# CTest "install_prefix": installs the build to a scratch prefix and uses it the way a user
# would, with nothing but the prefix (no LD_LIBRARY_PATH, no build tree):
#   - lasync.pc names that prefix, and examples/embed/game.c compiles against the installed
#     header and library through pkg-config, and runs;
#   - the installed lasync executable runs, also after the prefix is moved elsewhere;
#   - stock lua5.4 requires the installed module (found only under the prefix);
#   - the editor types are installed; DESTDIR stages without changing what lasync.pc says.
# usage: prefix_test.sh BUILD_DIR SOURCE_DIR LUA_CMOD_DIR
set -euo pipefail
build=$1 src=$2 cmod=$3
if [[ $cmod = /* ]]; then
  echo "skipped: LASYNC_LUA_CMOD_DIR is absolute ($cmod), so it is not under a scratch prefix"
  exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix
fail() { echo "FAIL: $*" >&2; exit 1; }

cmake --install "$build" --prefix "$prefix" >"$tmp/install.log" || { cat "$tmp/install.log"; fail "cmake --install"; }

pc=$(find "$prefix" -name lasync.pc)
[ -n "$pc" ] || fail "no lasync.pc installed"
export PKG_CONFIG_PATH=$(dirname "$pc")
[ "$(pkg-config --variable=prefix lasync)" = "$prefix" ] ||
  fail "lasync.pc says prefix=$(pkg-config --variable=prefix lasync), installed to $prefix"
pkg-config --exists --print-errors lasync || fail "pkg-config cannot resolve lasync's Requires"
libdir=$(pkg-config --variable=libdir lasync)
version=$(pkg-config --modversion lasync)
[ -f "$libdir/liblasync.so" ] && [ -f "$libdir/liblasync.a" ] || fail "no liblasync in $libdir"
echo "ok: lasync.pc follows the prefix: $(pkg-config --cflags --libs lasync)"

# The embedding example against the installed header and library. -llasync is the shared one;
# a program in a scratch prefix needs an rpath to find it (as it would with any library).
# shellcheck disable=SC2046
cc -o "$tmp/game" "$src/examples/embed/game.c" $(pkg-config --cflags lasync) \
  $(pkg-config --libs lasync) -lpthread -Wl,-rpath,"$libdir" || fail "game.c does not compile"
(cd "$tmp" && env -u LD_LIBRARY_PATH ./game "$src/examples/embed/game.lua" "" --quiet) \
  >"$tmp/game.out" || { cat "$tmp/game.out"; fail "game did not run"; }
grep -q "frames at 60 Hz" "$tmp/game.out" || { cat "$tmp/game.out"; fail "game printed no summary"; }
grep -q "liblasync.so" <(ldd "$tmp/game") || fail "game is not linked with the installed liblasync.so"
echo "ok: examples/embed built with pkg-config and ran: $(tail -1 "$tmp/game.out")"
# and statically: the archive, then what it needs, which is not libcurl: the first fetch loads
# it (bindings/http/libcurl.c).
# shellcheck disable=SC2046
cc -o "$tmp/game_static" "$src/examples/embed/game.c" $(pkg-config --cflags lasync) \
  "$libdir/liblasync.a" $(pkg-config --libs lua5.4 libuv) -lm -lpthread -ldl ||
  fail "game.c does not link statically with the installed liblasync.a"
if ldd "$tmp/game_static" | grep -q libcurl; then fail "game_static links libcurl"; fi
if ldd "$tmp/game_static" | grep -q liblasync; then fail "game_static links liblasync.so"; fi
"$tmp/game_static" "$src/examples/embed/game.lua" "" --quiet >/dev/null || fail "static game did not run"
echo "ok: examples/embed linked statically against liblasync.a"

# The executable: its core is linked in, so it needs no library from the prefix.
check_host() {
  local out
  out=$(cd "$tmp" && env -u LD_LIBRARY_PATH -u LUA_CPATH -u LUA_CPATH_5_4 "$1/bin/lasync" -e \
    'local async = require "lasync"; async.sleep(0.01); print("host " .. async.version)') ||
    fail "$1/bin/lasync does not run"
  [ "$out" = "host $version" ] || fail "$1/bin/lasync printed '$out'"
  if ldd "$1/bin/lasync" | grep -q "not found"; then fail "$1/bin/lasync: $(ldd "$1/bin/lasync")"; fi
}
check_host "$prefix"
echo "ok: the installed lasync runs with no LD_LIBRARY_PATH"

# The module from stock lua5.4, found under the prefix only (no default path: ';;' absent).
out=$(cd "$tmp" && P="$prefix" LUA_CPATH="$prefix/$cmod/?.so" LUA_CPATH_5_4="$prefix/$cmod/?.so" \
  lua5.4 -e '
  local async = require "lasync"
  assert(package.searchpath("lasync", package.cpath):find(os.getenv("P"), 1, true))
  print(async.run(function() async.sleep(0.01); return "module " .. async.version end))') ||
  fail "stock lua5.4 cannot require the installed module from $prefix/$cmod"
[ "$out" = "module $version" ] || fail "the module printed '$out'"
echo "ok: stock lua5.4 requires lasync from $prefix/$cmod"

[ -f "$prefix/share/lasync/types/lasync.lua" ] || fail "types/lasync.lua not installed"
echo "ok: share/lasync/types/lasync.lua"

# Relocated: the executable and the module still work from where they were moved.
mv "$prefix" "$tmp/moved"
check_host "$tmp/moved"
echo "ok: the executable runs after the prefix was moved"

# DESTDIR stages the files; lasync.pc still names the final prefix.
DESTDIR=$tmp/stage cmake --install "$build" --prefix /opt/lasync >/dev/null
staged=$(find "$tmp/stage" -name lasync.pc)
grep -qx "prefix=/opt/lasync" "$staged" || fail "DESTDIR install: $(head -1 "$staged")"
echo "ok: DESTDIR=.. --prefix /opt/lasync stages a lasync.pc naming /opt/lasync"
