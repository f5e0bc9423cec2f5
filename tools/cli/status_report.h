// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

namespace p11ha::cli {

// What `p11ha status` measured for one member, in the CLI's own process.
struct MemberReport {
  std::string name;
  std::string module;     // module path, or empty for a remote member
  std::string remote;     // p11-kit remote address, or empty
  std::string token_uri;  // the configured URI selecting the member's token
  bool standby = false;
  bool up = false;
  // "up", "standby" (up, serving only when no active member is), "recovering" or "down".
  std::string state = "down";
  std::string since;            // when the member entered that state, ISO 8601 local time
  std::uint64_t failures = 0;   // member failures counted in this run
  std::string last_error;       // the latest failure, kept after the member came back
  std::string error;      // why a down member is down
  // Known only for an up member.
  std::string label;
  std::string serial;
  std::string model;
  std::size_t mechanisms = 0;
  double latency_ms = 0;  // one C_GetTokenInfo, timed here
  std::optional<std::uint64_t> objects;
  std::string objects_note;  // why objects is unknown
  bool objects_problem = false;  // a failed login or search: the check found a problem
  // Logged in only: the domain key's check value (empty: none) and the keys that replication
  // keeps on this member alone (replication.non_extractable = "local").
  std::string domain;
  std::vector<std::string> local_keys;
  // Logged in only: drift entries the reconciler's dry pass found on this member (as `p11ha
  // verify` reports them); nullopt when not checked.
  std::optional<std::size_t> drift;
};

struct StatusReport {
  std::string config_path;
  std::string cluster_label;
  std::uint64_t slot_id = 0;
  std::string policy;
  bool logged_in = false;  // a pin_file was configured and used
  std::vector<MemberReport> members;

  std::size_t UpCount() const;
  // True when nothing needs attention: every member up, every login and search succeeded, and
  // (logged in) every member holds the same domain key and no drift was found.
  bool Healthy() const;
  bool DomainsDiffer() const;
  // Drift entries over all members, when the drift was checked.
  std::optional<std::size_t> DriftTotal() const;
};

void PrintTable(const StatusReport& report, std::ostream& out);
void PrintJson(const StatusReport& report, std::ostream& out);

}  // namespace p11ha::cli
