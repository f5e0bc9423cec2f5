// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <string>

#include "config/config.h"
#include "config/secure_bytes.h"

namespace p11ha::cli {

// What every verb reads before it starts; each failure is bad usage (Stop, exit 2) with one line.

// The config `--config` names, else the default path (ConfigPathOrDefault).
config::Config LoadConfigOrStop(const std::string& config_option);

// A secret from `file`, else a prompt (ReadSecret); an empty secret is refused.
SecureBytes SecretOrStop(const std::string& file, const std::string& what, const std::string& option);

// The members' user PIN: `--pin-file`, else [auth] pin_file, else a prompt.
SecureBytes UserPinOrStop(const std::string& pin_file_option, const config::Config& config);

}  // namespace p11ha::cli
