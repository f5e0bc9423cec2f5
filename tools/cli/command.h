// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <p11-kit/pkcs11.h>

#include <functional>
#include <string>

namespace CLI {
class App;
}

namespace p11ha::cli {

// Exit codes of DESIGN.md: scripts and monitoring depend on them.
inline constexpr int kExitOk = 0;
inline constexpr int kExitProblem = 1;  // the check found a problem, or an action was refused
inline constexpr int kExitUsage = 2;    // bad usage or bad config

// Runs a verb after its options were parsed; returns the process exit code.
using Runner = std::function<int()>;

// One verb of the subcommand table: Register adds the verb's options to `sub` and returns the
// runner, which reads them once parsing is done.
struct Command {
  const char* name;
  const char* summary;
  Runner (*Register)(CLI::App& sub);
};

// Adds `--config FILE` (default: $P11HA_CONFIG, else /etc/p11ha/p11ha.toml) to a verb.
void AddConfigOption(CLI::App& sub, std::string& path);
// The path `--config` chose, or the default path the module would read.
std::string ConfigPathOrDefault(const std::string& path);

// What stops a verb, with its exit code; the verb prints it as one stderr line.
struct Stop {
  int code;
  std::string message;
};

// Messages from members and p11-kit can span lines; the contract is one line per error.
std::string OneLine(std::string text);

// A login answer that counts against the PIN: after one, no other member is offered it, so a
// wrong PIN file does not spend every member's retries.
inline bool PinRefused(CK_RV rv) {
  return rv == CKR_PIN_INCORRECT || rv == CKR_PIN_LOCKED || rv == CKR_PIN_LEN_RANGE;
}

Runner RegisterStatus(CLI::App& sub);
Runner RegisterDomain(CLI::App& sub);
Runner RegisterVerify(CLI::App& sub);
Runner RegisterSync(CLI::App& sub);
Runner RegisterMember(CLI::App& sub);
Runner RegisterArchive(CLI::App& sub);
Runner RegisterPackage(CLI::App& sub);

}  // namespace p11ha::cli
