// SPDX-License-Identifier: Apache-2.0
// One process runs the whole suite against one target, so every case shares one token farm
// and one C_Initialize (and the RSA key pair that is slow to generate).
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <exception>
#include <iostream>

#include "target.h"

int main(int argc, char* argv[]) {
  Catch::Session session;
  if (const int rc = session.applyCommandLine(argc, argv); rc != 0) return rc;
  int result = 1;
  try {
    p11ha::conformance::SetUpTarget();
    result = session.run();
  } catch (const std::exception& error) {
    // A broken farm or module is a failure, never a skip.
    std::cerr << "conformance: " << error.what() << "\n";
    result = 1;
  }
  p11ha::conformance::TearDownTarget();
  return result;
}
