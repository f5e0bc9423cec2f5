// SPDX-License-Identifier: Apache-2.0
#include "tools/cli/inputs.h"

#include "tools/cli/command.h"
#include "tools/cli/secret_input.h"

namespace p11ha::cli {

config::Config LoadConfigOrStop(const std::string& config_option) {
  try {
    return config::LoadConfig(ConfigPathOrDefault(config_option));
  } catch (const config::ConfigError& e) {
    throw Stop{kExitUsage, e.what()};
  }
}

SecureBytes SecretOrStop(const std::string& file, const std::string& what, const std::string& option) {
  SecureBytes secret;
  try {
    secret = ReadSecret(file, what, option);
  } catch (const SecretInputError& e) {
    throw Stop{kExitUsage, e.what()};
  }
  if (secret.empty()) throw Stop{kExitUsage, option + ": the " + what + " is empty"};
  return secret;
}

SecureBytes UserPinOrStop(const std::string& pin_file_option, const config::Config& config) {
  return SecretOrStop(pin_file_option.empty() ? config.pin_file : pin_file_option, "user PIN",
                      "--pin-file (or [auth] pin_file)");
}

}  // namespace p11ha::cli
