# Writes OUT, a C file holding each of SOURCES ("|"-separated, paths under ROOT/lua) as a byte
# array, and one table lasync__lua_files[] naming them by their path under lua/ without ".lua"
# ("lasync", "http/client"): a new file in lua/ needs no line here. Run by CMake at build time
# (cmake -P), so no xxd or other tool is needed.
string(REPLACE "|" ";" SOURCES "${SOURCES}")
list(SORT SOURCES)
set(body "/* Generated from lua/ by cmake/embed.cmake: do not edit. */\n")
string(APPEND body "#include \"private.h\"\n")
set(table "")
set(i 0)
foreach(src ${SOURCES})
  file(RELATIVE_PATH rel "${ROOT}/lua" "${src}")
  string(REGEX REPLACE "\\.lua$" "" name "${rel}")
  file(READ ${src} hex HEX)
  string(LENGTH "${hex}" hexlen)
  math(EXPR len "${hexlen} / 2")
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
  string(APPEND body "static const char chunk${i}[] = {${bytes}0};\n")
  string(APPEND table "  {\"${name}\", chunk${i}, ${len}},\n")
  math(EXPR i "${i} + 1")
endforeach()
string(APPEND body "const lasync__lua_file lasync__lua_files[] = {\n${table}  {0, 0, 0}};\n")
file(WRITE ${OUT} "${body}")
