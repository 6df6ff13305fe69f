#!/usr/bin/env bash
# CTest "install_rock": `luarocks --lua-version 5.4 make` with Debian's luarocks and no
# variables, in a copy of the sources (luarocks builds in the source directory), into a scratch
# tree. The rock must hold the module and the lasync executable and nothing else (no tests,
# benchmarks, libraries, header or lasync.pc under lib/lua), both must work from the tree, and
# `luarocks remove` must take them away. Offline: the only dependency, lua, is the system's.
# usage: rock_test.sh SOURCE_DIR
set -euo pipefail
src=$1
command -v luarocks >/dev/null || { echo "skipped: no luarocks (apt-get install luarocks)"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
rocks() { luarocks --lua-version 5.4 --tree "$tmp/tree" "$@"; }

# The sources as a clone would have them (tracked and new files, no build directories).
mkdir "$tmp/src"
if git -C "$src" rev-parse --git-dir >/dev/null 2>&1; then
  (cd "$src" && git ls-files -z --cached --others --exclude-standard) |
    (cd "$src" && tar --null -cf - -T - --ignore-failed-read 2>/dev/null) | tar -xf - -C "$tmp/src"
else
  tar -C "$src" --exclude='./build*' --exclude='./.git' -cf - . | tar -xf - -C "$tmp/src"
fi
rockspec=$(cd "$tmp/src" && ls ./*.rockspec)

(cd "$tmp/src" && rocks make "$rockspec") >"$tmp/make.log" 2>&1 ||
  { tail -40 "$tmp/make.log"; fail "luarocks make"; }
echo "ok: luarocks --lua-version 5.4 make $rockspec"
grep -q "embed_test\|alloc_sweep\|baseline\|Built target game" "$tmp/make.log" &&
  fail "the rock built tests, benchmarks or examples: $(grep -o 'Built target [a-z_]*' "$tmp/make.log" | sort -u | tr '\n' ' ')"

# Exactly the module and the executable, besides luarocks' own records.
files=$(cd "$tmp/tree" && find . -type f ! -path './lib/luarocks/*' | sort | tr '\n' ' ')
[ "$files" = "./bin/lasync ./lib/lua/5.4/lasync.so " ] || fail "the rock installed: $files"
echo "ok: the rock installs only: $files"

eval "$(rocks path)"
out=$(cd "$tmp" && TREE="$tmp/tree" lua5.4 -e '
  local async = require "lasync"
  assert(package.searchpath("lasync", package.cpath):find(os.getenv("TREE"), 1, true))
  print(async.run(function() async.sleep(0.01); return "module " .. async.version end))' ) ||
  fail "stock lua5.4 cannot require the rock's module"
echo "ok: stock lua5.4 requires the rock's module: $out"
out=$(cd "$tmp" && env -u LD_LIBRARY_PATH "$tmp/tree/bin/lasync" -e \
  'local async = require "lasync"; async.sleep(0.01); print("host " .. async.version)') ||
  fail "the rock's lasync executable does not run"
echo "ok: the rock's executable runs: $out"

rocks remove lasync >/dev/null || fail "luarocks remove"
left=$(cd "$tmp/tree" && find . -type f ! -path './lib/luarocks/*' | tr '\n' ' ')
[ -z "$left" ] || fail "luarocks remove left: $left"
echo "ok: luarocks remove takes it away"
