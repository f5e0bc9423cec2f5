// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace p11ha::config {

enum class BalancingPolicy { kLeastBusy, kRoundRobin, kPriority };
enum class NonExtractablePolicy { kTrustedWrap, kRefuse, kLocal };

struct MemberConfig {
  std::string name;
  std::string module;  // module path; empty when `remote` is set
  std::string token;   // RFC 7512 URI selecting the member's token
  std::string remote;  // p11-kit remote address ("unix:path=..."); empty for a module member
  bool standby = false;
  unsigned weight = 1;
};

struct Quorum {
  enum class Kind { kMajority, kAll, kCount } kind = Kind::kMajority;
  unsigned count = 0;  // only for kCount
};

struct Config {
  std::string source_path;  // the file this came from, for messages

  std::string cluster_label = "p11ha";
  std::uint64_t slot_id = 0;
  std::vector<MemberConfig> members;

  std::string pin_file;

  std::string domain_key_label = "p11ha-domain";
  Quorum quorum;
  NonExtractablePolicy non_extractable = NonExtractablePolicy::kTrustedWrap;

  BalancingPolicy balancing = BalancingPolicy::kLeastBusy;

  unsigned probe_interval_ms = 1000;
  unsigned call_timeout_ms = 2000;
  // Input of a multi-part operation kept so that it can be replayed on another member when
  // its member fails; past this many bytes the operation can no longer move.
  std::uint64_t replay_limit_bytes = 1 << 20;

  // How long a complete listing of the members lets p11ha answer finds from its own catalog;
  // what other processes create or destroy is seen within this time (README "Finding
  // objects"). 0: every find goes to the members.
  unsigned catalog_max_age_ms = 2000;

  std::string log_level = "warn";
  std::string log_file;  // empty: syslog
};

// A config problem, already phrased for the operator: "FILE:LINE: key 'a.b': what is wrong".
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The path the module and the CLI read: $P11HA_CONFIG, else /etc/p11ha/p11ha.toml.
std::string DefaultConfigPath();

// Parses and validates; throws ConfigError naming file, line and key.
Config LoadConfig(const std::string& path);
Config ParseConfig(const std::string& toml_text, const std::string& source_path);

// Reads a secret (PIN) file: the whole content without a trailing newline. Throws ConfigError.
std::string ReadSecretFile(const std::string& path);

}  // namespace p11ha::config
