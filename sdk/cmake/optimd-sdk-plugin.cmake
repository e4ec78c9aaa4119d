# optimd_sdk_add_plugin(<id> <source>... [OUTPUT_DIRECTORY dir] [TARGET name])
#
# Builds the optimd plugin <id>.so (a MODULE library) with the flags
# docs/abi.md §12 asks for:
#  - no "lib" prefix, so the file is <id>.so;
#  - hidden visibility and a version script exporting only `optimd_plugin`
#    (symbols from static libraries are hidden too);
#  - -Wl,-z,defs: an undefined symbol fails the link, not the daemon's dlopen;
#  - -ffp-contract=off: no silent fused multiply-adds, so results are
#    reproducible (call fma() where you mean one);
#  - for C++ with GCC, -fno-gnu-unique: unique symbols would make the object
#    impossible to unload (hot swap).
# The target is named <id> unless TARGET says otherwise. It links
# optimd::sdk (the headers) and libm.
#
# optimd_add_plugin(...) is the same function under the name the
# documentation uses; it is only defined when the name is free.

set_property(GLOBAL PROPERTY OPTIMD_SDK_PLUGIN_MAP "${CMAKE_CURRENT_LIST_DIR}/optimd_plugin.map")

function(optimd_sdk_add_plugin id)
  cmake_parse_arguments(P "" "OUTPUT_DIRECTORY;TARGET" "" ${ARGN})
  if(NOT id MATCHES "^[a-z0-9_.-]+$")
    message(FATAL_ERROR "optimd_add_plugin: plugin id '${id}' must match [a-z0-9_.-]+")
  endif()
  if(NOT P_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "optimd_add_plugin(${id}): no source files given")
  endif()
  set(target ${id})
  if(P_TARGET)
    set(target ${P_TARGET})
  endif()
  get_property(map GLOBAL PROPERTY OPTIMD_SDK_PLUGIN_MAP)
  add_library(${target} MODULE ${P_UNPARSED_ARGUMENTS})
  set_target_properties(${target} PROPERTIES
    PREFIX ""
    SUFFIX ".so"
    OUTPUT_NAME ${id}
    POSITION_INDEPENDENT_CODE ON
    C_VISIBILITY_PRESET hidden
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON
    LINK_DEPENDS ${map})
  if(P_OUTPUT_DIRECTORY)
    set_target_properties(${target} PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${P_OUTPUT_DIRECTORY})
  endif()
  target_link_libraries(${target} PRIVATE optimd::sdk m)
  target_compile_options(${target} PRIVATE
    -ffp-contract=off
    $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<CXX_COMPILER_ID:GNU>>:-fno-gnu-unique>)
  target_link_options(${target} PRIVATE
    -Wl,-z,defs
    -Wl,--version-script=${map})
endfunction()

if(NOT COMMAND optimd_add_plugin)
  function(optimd_add_plugin)
    optimd_sdk_add_plugin(${ARGV})
  endfunction()
endif()
