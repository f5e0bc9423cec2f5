// SPDX-License-Identifier: Apache-2.0
// A member that returns is reconciled with the others before it serves (DESIGN.md
// "Replication"): the copies it missed are made, the deletions it missed are applied.
#include <algorithm>
#include <set>

#include "provider/core/error.h"
#include "provider/core/log.h"
#include "provider/core/module.h"
#include "provider/core/object_identity.h"
#include "provider/member/member_token_session.h"
#include "replication/reconciler.h"

namespace p11ha {

std::uint64_t Module::EnterFanOut() {
  std::lock_guard lock(joining_mu_);
  ++fan_outs_[fan_out_era_];
  return fan_out_era_;
}

void Module::LeaveFanOut(std::uint64_t era) {
  {
    std::lock_guard lock(joining_mu_);
    if (--fan_outs_[era] == 0) fan_outs_.erase(era);
  }
  fan_outs_done_.notify_all();
}

void Module::StartJoining(std::size_t member) {
  joining_[member].store(true, std::memory_order_release);
  std::unique_lock lock(joining_mu_);
  const std::uint64_t era = ++fan_out_era_;
  // A fan-out is a handful of member calls, each bounded by the call timeout; past this bound
  // the reconciliation goes ahead, and what it misses is the next rejoin's or `p11ha sync`'s.
  const auto bound = 8 * std::chrono::milliseconds(config_.call_timeout_ms);
  if (!fan_outs_done_.wait_for(lock, bound, [&] { return fan_outs_.empty() || fan_outs_.begin()->first >= era; }))
    log::Get()->warn("rejoin of {}: copies or deletions of other calls still under way; it may miss them",
                     pool_.at(member).name());
}

void Module::EndJoining(std::size_t member) {
  joining_[member].store(false, std::memory_order_release);
  std::lock_guard lock(joining_mu_);
  std::erase_if(copy_claims_, [member](const auto& claim) { return claim.first == member; });
  std::erase_if(deleted_while_joining_, [member](const auto& deleted) { return deleted.first == member; });
}

void Module::RememberOrphan(std::size_t member, const std::string& identity) {
  {
    std::lock_guard lock(joining_mu_);
    orphans_[member].insert(identity);
  }
  log::Get()->info("member {} failed before p11ha could remove an object of a failed creation; it is removed when "
                   "the member rejoins", pool_.at(member).name());
}

CK_RV Module::CreationFailed(const Route& home, CK_RV rv, std::span<const replication::OrphanName> names) {
  // A stale route refused a later step, after the creation itself ran on the old instance.
  if (!(IsDeviceClass(rv) || rv == kStaleRoute) || pool_.size() < 2) return rv;
  std::lock_guard lock(joining_mu_);
  auto& remembered = orphan_names_[home.member->index()];
  for (const replication::OrphanName& name : names)
    if (name.label || name.id) remembered.push_back(name);
  return rv;
}

bool Module::ClaimCopy(std::size_t member, const std::string& identity) {
  std::lock_guard lock(joining_mu_);
  return !deleted_while_joining_.contains({member, identity}) && copy_claims_.emplace(member, identity).second;
}

void Module::NoteDeletion(const std::string& identity) {
  std::lock_guard lock(joining_mu_);
  for (std::size_t i = 0; i < pool_.size(); ++i)
    if (Joining(i)) deleted_while_joining_.emplace(i, identity);
}

bool Module::KeepCopy(std::size_t member, const std::string& identity) {
  std::lock_guard lock(joining_mu_);
  return !deleted_while_joining_.contains({member, identity});
}

bool Module::ReconcileWith(Member& returning) {
  std::vector<std::unique_ptr<MemberTokenSession>> sessions;
  std::vector<replication::ReconcileMember> members(pool_.size());
  std::vector<std::size_t> involved;
  for (std::size_t i = 0; i < pool_.size(); ++i) {
    Member& member = pool_.at(i);
    members[i].name = member.name();
    if (&member != &returning && !member.up()) {
      members[i].note = "down";
      continue;
    }
    try {
      sessions.push_back(std::make_unique<MemberTokenSession>(member));
      if (!sessions.back()->UserLoggedIn()) {
        // It would show public objects only, and everything private would look like drift.
        if (&member == &returning) {
          log::Get()->warn("rejoin of {}: its login did not hold (it restarted again?); retrying", member.name());
          return false;
        }
        members[i].note = "not logged in";
        continue;
      }
      members[i].token = sessions.back().get();
      involved.push_back(i);
    } catch (const std::exception& e) {
      members[i].token = nullptr;
      members[i].note = e.what();
    }
  }
  const std::uint64_t agreeing = DomainAgreement(involved);
  for (std::size_t i : involved) {
    CK_OBJECT_HANDLE key = DomainKeyOn(pool_.at(i));
    if (key == CK_INVALID_HANDLE) continue;
    if (agreeing & (std::uint64_t{1} << i)) {
      members[i].domain_key = key;
    } else {
      members[i].foreign_domain = true;
    }
  }
  replication::ReconcileOptions options;
  options.domain_label = config_.domain_key_label;
  options.configured_members = pool_.size();
  options.local_keys_expected = config_.non_extractable == config::NonExtractablePolicy::kLocal;
  options.log = [&returning](const std::string& line) {
    log::Get()->info("rejoin of {}: {}", returning.name(), line);
  };
  options.rv_name = [](CK_RV rv) { return std::string(RvName(rv)); };
  options.overlap_copies = own_threads_;
  options.rejoining = returning.index();
  {
    std::lock_guard lock(joining_mu_);
    if (auto it = orphans_.find(returning.index()); it != orphans_.end()) options.orphans = it->second;
    if (auto it = orphan_names_.find(returning.index()); it != orphan_names_.end()) options.orphan_names = it->second;
  }
  options.claim_copy = [this](std::size_t member, const std::string& identity) {
    return !Joining(member) || ClaimCopy(member, identity);
  };
  options.keep_copy = [this](std::size_t member, const std::string& identity) { return KeepCopy(member, identity); };
  try {
    replication::ReconcileReport report = replication::Reconcile(members, options);
    // Forgotten once this rejoin removed it or found it nowhere (it never reached the token);
    // kept when its removal failed.
    std::set<std::string> failed;
    const auto& mine = report.members[returning.index()];
    for (const auto& entry : mine.entries)
      if (entry.kind == replication::DriftKind::kOrphan && entry.state == replication::ActionState::kFailed)
        failed.insert(entry.identity);
    if (mine.checked) {
      std::lock_guard lock(joining_mu_);
      if (auto it = orphans_.find(returning.index()); it != orphans_.end())
        std::erase_if(it->second, [&](const std::string& identity) {
          return options.orphans.contains(identity) && !failed.contains(identity);
        });
      // Names are kept while what they found could not be removed; nothing adds to them while
      // the member is away, so the ones handed over are the first ones.
      if (auto it = orphan_names_.find(returning.index()); it != orphan_names_.end() && failed.empty())
        it->second.erase(it->second.begin(),
                         it->second.begin() + std::min(it->second.size(), options.orphan_names.size()));
    }
    for (const auto& member : report.members)
      for (const auto& entry : member.entries)
        if (entry.Unresolved() && entry.kind != replication::DriftKind::kMemberDown)
          log::Get()->warn("rejoin of {}: {}: {} {} {}", returning.name(), member.name,
                           replication::DriftKindName(entry.kind), entry.object, entry.error);
    // Serving would bring back the member that TakeDownRefuser took out, still without the keys.
    if (std::any_of(mine.entries.begin(), mine.entries.end(), [](const auto& e) { return e.store_refused; })) {
      log::Get()->error("rejoin of {}: its object store still refuses copies (CKR_GENERAL_ERROR); it stays down",
                        returning.name());
      return false;
    }
  } catch (const std::exception& e) {
    log::Get()->error("rejoin of {}: reconciliation failed: {}", returning.name(), e.what());
    return false;
  }
  return true;
}

void Module::RemapObjects(Member& member) {
  if (!catalog_.HeldBefore(member.index(), member.epoch())) return;
  // A member instance that starts again hands out its handle numbers again, for other objects
  // (research/p11-kit-remote.md Q4): the old numbers are void, and each known object is found
  // again by its identity.
  try {
    MemberTokenSession token(member);
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE match[] = {{CKA_TOKEN, &yes, sizeof yes}};
    std::vector<CK_OBJECT_HANDLE> found;
    if (CK_RV rv = token.FindObjects(match, found); rv != CKR_OK) {
      log::Get()->warn("member {}: cannot list its objects again: {}", member.name(), RvName(rv));
      return;
    }
    const CK_OBJECT_HANDLE domain_key = DomainKeyOn(member);
    std::size_t mapped = 0;
    for (CK_OBJECT_HANDLE handle : found) {
      ObjectFacts facts;
      SearchKeys keys;
      if (ReadObjectFacts(member, token.session(), handle, domain_key, config_.domain_key_label, &facts, &keys) !=
          CKR_OK)
        continue;
      catalog_.Register(MemberHandle{member.index(), member.epoch(), handle}, facts, CK_INVALID_HANDLE, std::move(keys));
      ++mapped;
    }
    log::Get()->info("member {}: {} objects mapped to its new handles", member.name(), mapped);
  } catch (const std::exception& e) {
    log::Get()->warn("member {}: cannot map its objects again: {}", member.name(), e.what());
  }
}

}  // namespace p11ha
