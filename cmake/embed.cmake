# Writes OUT, a C file holding each of SOURCES ("|"-separated) as `const char lasync__lua_<name>[]` plus its
# length. Run by CMake at build time (cmake -P), so no xxd or other tool is needed.
string(REPLACE "|" ";" SOURCES "${SOURCES}")
set(body "/* Generated from lua/ by cmake/embed.cmake: do not edit. */\n")
foreach(src ${SOURCES})
  get_filename_component(name ${src} NAME_WE)
  file(READ ${src} hex HEX)
  string(LENGTH "${hex}" hexlen)
  math(EXPR len "${hexlen} / 2")
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
  string(APPEND body "const char lasync__lua_${name}[] = {${bytes}0};\n")
  string(APPEND body "const unsigned long lasync__lua_${name}_len = ${len};\n")
endforeach()
file(WRITE ${OUT} "${body}")
