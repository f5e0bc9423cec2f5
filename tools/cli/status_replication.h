// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <string>
#include <vector>

#include "provider/member/member.h"

namespace p11ha::cli {

// What `p11ha status` reports about replication on one logged-in member.
struct ReplicationFacts {
  std::string domain;                   // the domain key's check value (hex), empty when none
  std::vector<std::string> local_keys;  // labels of keys that live on this member only
  std::string problem;                  // why the facts could not be read, or empty
};

ReplicationFacts InspectReplication(Member& member, const std::string& domain_label);

}  // namespace p11ha::cli
