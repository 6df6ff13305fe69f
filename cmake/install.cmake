# Install rules, included by CMakeLists.txt once the targets exist. Two layouts:
#
# - a system or scratch prefix (`make install`, `cmake --install build --prefix P`): the
#   executable, the header, both libraries, lasync.pc, the Lua module and the editor types;
# - a rock (LASYNC_ROCK=ON, set by the rockspec): only the module, into the rock's LIBDIR, and
#   the executable, into its BINDIR. luarocks deploys everything under the rock's lib/ into the
#   tree's lib/lua/5.4/, so nothing else may go there.
include(GNUInstallDirs)

# Where stock lua5.4 looks for C modules below the prefix. `<libdir>/lua/5.4` is in Debian's
# default package.cpath for both /usr/local (lib/lua/5.4) and /usr (lib/x86_64-linux-gnu/lua/5.4),
# and matches upstream Lua's LUA_CDIR. STRING, not PATH: a relative value stays relative to the
# prefix chosen at install time.
set(LASYNC_LUA_CMOD_DIR ${CMAKE_INSTALL_LIBDIR}/lua/5.4 CACHE STRING
  "Where the Lua module is installed (relative to the prefix, or absolute)")
set(LASYNC_BIN_DIR ${CMAKE_INSTALL_BINDIR} CACHE STRING "Where the executable is installed")

install(TARGETS lasync RUNTIME DESTINATION ${LASYNC_BIN_DIR})
install(TARGETS lasync_module LIBRARY DESTINATION ${LASYNC_LUA_CMOD_DIR})

if(NOT LASYNC_ROCK)
  install(TARGETS lasync_static lasync_shared
    ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
    LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
    PUBLIC_HEADER DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
  install(FILES ${CMAKE_SOURCE_DIR}/types/lasync.lua
    DESTINATION ${CMAKE_INSTALL_DATADIR}/lasync/types) # docs/types.md

  # lasync.pc names the prefix given at install time (`cmake --install --prefix P`), not the one
  # configured: it is written by the install step itself. Everything but the prefix is filled in
  # now; the prefix then, by configure_file in the install script.
  foreach(dir LIBDIR INCLUDEDIR)
    if(IS_ABSOLUTE "${CMAKE_INSTALL_${dir}}")
      set(LASYNC_PC_${dir} "${CMAKE_INSTALL_${dir}}")
    else()
      set(LASYNC_PC_${dir} "\${prefix}/${CMAKE_INSTALL_${dir}}")
    endif()
  endforeach()
  set(LASYNC_PC_PREFIX "@LASYNC_PC_PREFIX@") # left for the install step
  configure_file(${CMAKE_SOURCE_DIR}/cmake/lasync.pc.in ${CMAKE_BINARY_DIR}/lasync.pc.in @ONLY)
  install(CODE "
    set(LASYNC_PC_PREFIX \"\${CMAKE_INSTALL_PREFIX}\")
    configure_file(\"${CMAKE_BINARY_DIR}/lasync.pc.in\" \"${CMAKE_BINARY_DIR}/lasync.pc\" @ONLY)
  ")
  install(FILES ${CMAKE_BINARY_DIR}/lasync.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
endif()

if(LASYNC_ROCK) # a rock installs neither library: do not build them either
  set_target_properties(lasync_static lasync_shared PROPERTIES EXCLUDE_FROM_ALL ON)
endif()

# liblasync.so.0 -> liblasync.so.0.1.0, with liblasync.so for the linker: programs record the
# soname, so a later compatible release replaces the library under them.
set_target_properties(lasync_shared PROPERTIES VERSION ${PROJECT_VERSION}
  SOVERSION ${PROJECT_VERSION_MAJOR})
