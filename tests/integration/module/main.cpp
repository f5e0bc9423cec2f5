// SPDX-License-Identifier: Apache-2.0
// ctest runs each case in its own process (catch_discover_tests), because p11ha is loaded and
// configured once per process, as by an application.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
