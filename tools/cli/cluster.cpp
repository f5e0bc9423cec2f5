// SPDX-License-Identifier: Apache-2.0
#include "tools/cli/cluster.h"

#include <map>

#include "provider/core/error.h"
#include "tools/cli/command.h"

namespace p11ha::cli {

using replication::CheckValue;
using replication::CheckValueHex;
using replication::ReconcileMember;

Cluster::Cluster(const config::Config& config, const SecureBytes& pin) : config_(config), pool_(config) {
  try {
    pool_.LoadAll();
  } catch (const CkError& e) {
    throw Stop{kExitUsage, config.source_path + ": " + OneLine(e.what())};
  }
  pool_.ConnectAll();
  std::string refused_by;
  for (std::size_t i = 0; i < pool_.size(); ++i) reached_.push_back(Reach(pool_.at(i), pin, refused_by));
  ChooseDomain();
}

Cluster::~Cluster() {
  reached_.clear();  // sessions close before their members go
  pool_.DisconnectAll();
}

std::string Cluster::domain() const { return domain_ ? CheckValueHex(*domain_) : std::string(); }

Reached Cluster::Reach(Member& member, const SecureBytes& pin, std::string& refused_by) {
  Reached reached;
  if (!member.up()) {
    reached.note = "down: " + OneLine(member.Status().last_error);
    return reached;
  }
  // Every wrong PIN counts towards the HSM's lockout: once one member refuses it, stop.
  if (!refused_by.empty()) {
    reached.note = "login not tried: " + refused_by + " refused the PIN";
    return reached;
  }
  if (CK_RV rv = member.Login(CKU_USER, pin); rv != CKR_OK) {
    reached.note = std::string("C_Login failed: ") + RvName(rv);
    if (PinRefused(rv)) refused_by = member.name();
    if (IsDeviceClass(rv)) member.MarkDown(reached.note);
    return reached;
  }
  try {
    reached.session = std::make_unique<MemberTokenSession>(member);
  } catch (const CkError& e) {
    reached.note = OneLine(e.what());
    return reached;
  }
  return reached;
}

// The cluster's domain is the check value most members hold, if one holds strictly more
// members than any other; members holding another are reported and never used for copies.
void Cluster::ChooseDomain() {
  std::map<CheckValue, std::size_t> votes;
  std::vector<std::optional<CheckValue>> held(reached_.size());
  std::vector<bool> mixed(reached_.size(), false);
  for (std::size_t i = 0; i < reached_.size(); ++i) {
    Reached& member = reached_[i];
    if (!member.session) continue;
    try {
      member.domain_keys = replication::FindDomainKeys(*member.session, config_.domain_key_label);
    } catch (const replication::TokenError& e) {
      member.note = std::string(e.what()) + ": " + RvName(e.rv());
      member.session.reset();
      continue;
    }
    for (const replication::FoundDomainKey& key : member.domain_keys)
      mixed[i] = mixed[i] || key.check != member.domain_keys.front().check;
    if (member.domain_keys.empty() || mixed[i]) continue;
    held[i] = member.domain_keys.front().check;
    ++votes[*held[i]];
  }
  std::size_t best = 0, best_count = 0;
  for (const auto& [check, count] : votes) {
    if (count > best) {
      best = count;
      best_count = 1;
      domain_ = check;
    } else if (count == best) {
      ++best_count;
    }
  }
  if (best_count > 1) domain_.reset();

  for (std::size_t i = 0; i < reached_.size(); ++i) {
    Reached& member = reached_[i];
    ReconcileMember& out = members_.emplace_back();
    out.name = pool_.at(i).name();
    out.note = member.note;
    if (!member.session) continue;
    out.token = member.session.get();
    if (mixed[i]) {
      out.foreign_domain = true;
      out.note = "holds two different domain keys labelled \"" + config_.domain_key_label + "\"";
    } else if (held[i] && !domain_) {
      out.foreign_domain = true;
      out.note = "holds domain key " + CheckValueHex(*held[i]) + ", and no domain key is held by a majority";
    } else if (held[i] && *held[i] != *domain_) {
      out.foreign_domain = true;
      out.note = "holds domain key " + CheckValueHex(*held[i]) + ", not the cluster's " + CheckValueHex(*domain_);
    } else if (held[i]) {
      out.domain_key = member.domain_keys.front().handle;
    }
  }
}

replication::ReconcileReport ReconcilePass(Cluster& cluster, const config::Config& config, bool dry_run) {
  replication::ReconcileOptions options;
  options.domain_label = config.domain_key_label;
  options.dry_run = dry_run;
  options.configured_members = config.members.size();
  options.local_keys_expected = config.non_extractable == config::NonExtractablePolicy::kLocal;
  options.rv_name = [](CK_RV rv) { return std::string(RvName(rv)); };
  options.overlap_copies = true;
  return replication::Reconcile(cluster.members(), options);
}

}  // namespace p11ha::cli
