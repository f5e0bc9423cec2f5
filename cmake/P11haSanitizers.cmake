# SPDX-License-Identifier: Apache-2.0
# ASan + UBSan for the whole tree; member modules are dlopen'd, so nothing else changes.
if(P11HA_SANITIZE)
  add_compile_options(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=address,undefined)
endif()
