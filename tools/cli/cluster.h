// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "config/config.h"
#include "config/secure_bytes.h"
#include "provider/member/member_pool.h"
#include "provider/member/member_token_session.h"
#include "replication/check_value.h"
#include "replication/domain_key.h"
#include "replication/reconciler.h"

namespace p11ha::cli {

// A member as far as the CLI got with it: connected, logged in, and its domain keys read.
struct Reached {
  std::unique_ptr<MemberTokenSession> session;
  std::vector<replication::FoundDomainKey> domain_keys;
  std::string note;  // why it was not reached
};

// Every configured member, connected and logged in with the user PIN, with the domain key
// chosen by majority. Used by every verb that reads or writes the members' objects.
class Cluster {
 public:
  // Throws Stop (exit 2) when a member module cannot be loaded.
  Cluster(const config::Config& config, const SecureBytes& pin);
  ~Cluster();
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  // One entry per configured member, in config order; token is null for a member not reached.
  std::vector<replication::ReconcileMember>& members() { return members_; }
  MemberPool& pool() { return pool_; }
  // The cluster's domain check value in hex, or empty when no domain holds a majority.
  std::string domain() const;
  const std::optional<replication::CheckValue>& domain_value() const { return domain_; }

 private:
  static Reached Reach(Member& member, const SecureBytes& pin, std::string& refused_by);
  void ChooseDomain();

  const config::Config& config_;
  MemberPool pool_;
  std::vector<Reached> reached_;
  std::vector<replication::ReconcileMember> members_;
  std::optional<replication::CheckValue> domain_;
};

// One reconciler pass over the cluster (replication/reconciler.h), with the config's options;
// `dry_run` only reports (verify, status), otherwise it repairs (sync).
replication::ReconcileReport ReconcilePass(Cluster& cluster, const config::Config& config, bool dry_run);

}  // namespace p11ha::cli
