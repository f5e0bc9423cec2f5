// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <stdexcept>
#include <string>

#include "config/secure_bytes.h"

namespace p11ha::cli {

// No secret could be had: an unreadable file, or no file and no terminal (bad usage, exit 2).
class SecretInputError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A secret from `file` (config::ReadSecretFile) when it is not empty, else from a prompt on the
// terminal without echo. Secrets never come from the command line (DESIGN.md); in CI there is
// no terminal, and then the message names `option` instead of waiting for input.
SecureBytes ReadSecret(const std::string& file, const std::string& what, const std::string& option);

}  // namespace p11ha::cli
