// SPDX-License-Identifier: Apache-2.0
// Replication inside the module (DESIGN.md "Replication"): domain keys of the members, fan-out
// of new token objects with quorum, tombstones for deletions that miss a member.
#include <algorithm>
#include <map>
#include <thread>

#include "provider/core/birth_copies.h"
#include "provider/core/error.h"
#include "provider/core/log.h"
#include "provider/core/module.h"
#include "provider/core/object_identity.h"
#include "provider/member/member_token_session.h"
#include "replication/domain_key.h"
#include "replication/object_copy.h"
#include "replication/object_identity.h"
#include "replication/tombstone.h"

namespace p11ha {
namespace {

// One target of a fan-out: its copies are made in one member call of their own, so targets
// run in parallel.
struct CopyTarget {
  std::size_t member = 0;
  std::uint64_t epoch = 0;  // the member instance the copies are made in
  // A member being reconciled (Module::Joining): it takes copies but does not count towards
  // the quorum, and a failure there is its rejoin's business.
  bool joining = false;
  CopiesAsked asked;
  Copies made;
};

}  // namespace

CK_OBJECT_HANDLE Module::DomainKeyOn(Member& member, replication::CheckValue* check) {
  if (login_.who() != LoginState::Who::kUser || member.functions() == nullptr) return CK_INVALID_HANDLE;
  const std::uint64_t epoch = member.epoch(), generation = login_.generation();
  {
    std::lock_guard lock(domain_mu_);
    const DomainSeat& seat = domain_seats_[member.index()];
    if (seat.known && seat.epoch == epoch && seat.generation == generation) {
      if (check) *check = seat.check;
      return seat.key;
    }
  }
  // The domain key is a private token object: found once per connection and login.
  DomainSeat seat{true, epoch, generation, CK_INVALID_HANDLE, {}};
  try {
    MemberTokenSession token(member);
    auto keys = replication::FindDomainKeys(token, config_.domain_key_label);
    bool agree = std::all_of(keys.begin(), keys.end(), [&](const auto& k) { return k.check == keys.front().check; });
    if (!keys.empty() && agree) {
      seat.key = keys.front().handle;
      seat.check = keys.front().check;
    } else if (!keys.empty()) {
      log::Get()->error("member {} holds two different domain keys labelled '{}'; it is not used for replication",
                        member.name(), config_.domain_key_label);
    }
  } catch (const std::exception& e) {
    log::Get()->warn("member {}: cannot read its domain key: {}", member.name(), e.what());
    return CK_INVALID_HANDLE;
  }
  std::lock_guard lock(domain_mu_);
  domain_seats_[member.index()] = seat;
  if (check) *check = seat.check;
  return seat.key;
}

std::uint64_t Module::DomainAgreement(const std::vector<std::size_t>& members) {
  std::map<replication::CheckValue, std::size_t> votes;
  std::vector<std::pair<std::size_t, replication::CheckValue>> seen;
  for (std::size_t index : members) {
    replication::CheckValue check{};
    if (DomainKeyOn(pool_.at(index), &check) == CK_INVALID_HANDLE) continue;
    ++votes[check];
    seen.emplace_back(index, check);
  }
  if (votes.empty()) return 0;
  auto majority = std::max_element(votes.begin(), votes.end(),
                                   [](const auto& a, const auto& b) { return a.second < b.second; });
  std::uint64_t mask = 0;
  for (const auto& [index, check] : seen) {
    if (check == majority->first) {
      mask |= std::uint64_t{1} << index;
    } else {
      log::Get()->error("member {} holds domain {} but the others hold {}; it is not used for replication",
                        pool_.at(index).name(), replication::CheckValueHex(check),
                        replication::CheckValueHex(majority->first));
    }
  }
  return mask;
}

std::size_t Module::QuorumSize() const {
  std::size_t active = 0;
  for (const auto& member : config_.members) active += member.standby ? 0 : 1;
  switch (config_.quorum.kind) {
    case config::Quorum::Kind::kAll:
      return config_.members.size();
    case config::Quorum::Kind::kCount:
      return std::min<std::size_t>(config_.quorum.count, config_.members.size());
    case config::Quorum::Kind::kMajority:
      break;
  }
  return active / 2 + 1;
}

CK_RV Module::CheckKeyCreation(Member& home, const char* function) {
  if (pool_.size() < 2) return CKR_OK;
  // Replicating a key needs the domain key, and the domain key is private.
  if (login_.who() != LoginState::Who::kUser) return CKR_USER_NOT_LOGGED_IN;
  if (DomainKeyOn(home) != CK_INVALID_HANDLE) return CKR_OK;
  log::Get()->error("{}: member {} has no replication domain key labelled '{}': run `p11ha domain create` "
                    "(a cluster of two or more members creates no keys without one)",
                    function, home.name(), config_.domain_key_label);
  return CKR_FUNCTION_FAILED;
}

void Module::DestroyMade(const Route& home, std::span<const CK_OBJECT_HANDLE> made,
                         std::span<const ObjectFacts> facts) {
  for (std::size_t i = 0; i < made.size(); ++i) {
    CK_RV rv = home.member->Call("C_DestroyObject", CallKind::kStore, &CK_FUNCTION_LIST::C_DestroyObject,
                                 home.session, made[i]);
    if (rv == CKR_OK || rv == CKR_OBJECT_HANDLE_INVALID || !IsDeviceClass(rv)) continue;
    if (i < facts.size() && !facts[i].identity.empty()) {
      if (facts[i].token) RememberOrphan(home.member->index(), facts[i].identity);
    } else {
      log::Get()->warn("member {} failed before p11ha could remove an object of a failed creation, and before it "
                       "could tell which: its rejoin looks for it by the CKA_LABEL and CKA_ID the application asked "
                       "for; without either, `p11ha verify` lists it",
                       home.member->name());
    }
  }
}

CK_RV Module::Replicate(const Route& home, const char* function, Creation create, replication::BirthVerdict verdict,
                        VirtualSession& owner, std::span<CK_OBJECT_HANDLE> out) {
  ReplicationWrite write(*this);
  Member& source = *home.member;
  NewObjects read = CreateAndRead(source, function,
                                  {.session = home.session,
                                   .create = std::move(create),
                                   .count = out.size(),
                                   .domain_key = DomainKeyOn(source),
                                   .domain_label = config_.domain_key_label,
                                   .verdict = verdict,
                                   .policy = config_.non_extractable,
                                   .copies_wanted = pool_.size() > 1});
  if (read.created != CKR_OK) return read.created == CKR_GENERAL_ERROR ? kCreationRefused : read.created;
  const std::span<const CK_OBJECT_HANDLE> made = read.made;
  std::vector<ObjectFacts>& facts = read.facts;
  if (read.rv != CKR_OK) {
    DestroyMade(home, made, facts);
    return read.rv;
  }
  if (read.plan_rv != CKR_OK) {
    DestroyMade(home, made, facts);
    log::Get()->error("{}: cannot read the new object for replication: {}", function, read.plan_error);
    return read.plan_rv;
  }
  const BirthChoice& choice = read.choice;
  if (choice.token && choice.cannot_leave && !choice.keep_local) {
    DestroyMade(home, made, facts);
    log::Get()->error("{}: the new key cannot be wrapped by the domain key (CKA_EXTRACTABLE=FALSE, or a key type "
                      "the member cannot wrap), so it cannot be replicated; replication.non_extractable = \"local\" "
                      "would keep it on one member",
                      function);
    return CKR_FUNCTION_FAILED;
  }

  std::vector<CopyTarget> targets;
  const bool copying = read.plans && !read.plans->empty();
  if (copying) {
    const std::vector<replication::CopyPlan>& plans = *read.plans;
    bool keys = std::any_of(plans.begin(), plans.end(), [](const auto& p) { return p.by_wrap; });
    std::vector<std::size_t> up;
    for (std::size_t i = 0; i < pool_.size(); ++i)
      if (i != source.index() && (pool_.at(i).up() || Joining(i))) up.push_back(i);
    std::uint64_t agreeing = keys ? DomainAgreement(up) : ~std::uint64_t{0};
    for (std::size_t index : up) {
      if (!(agreeing & (std::uint64_t{1} << index))) continue;
      Member& member = pool_.at(index);
      CopyTarget target{.member = index, .epoch = member.epoch(), .joining = !member.up() && Joining(index)};
      target.asked.plans = read.plans;
      bool any = false;
      for (std::size_t k = 0; k < plans.size(); ++k) {
        target.asked.skip.push_back(target.joining && !ClaimCopy(index, facts[read.copied[k]].identity));
        any = any || !target.asked.skip.back();
      }
      if (!any) continue;
      // Found before the member call: the lookup may itself call the member.
      target.asked.domain_key = keys ? DomainKeyOn(member) : CK_INVALID_HANDLE;
      targets.push_back(std::move(target));
    }
    auto copy_to = [this](CopyTarget& target) {
      target.made = WriteCopies(pool_.at(target.member), target.epoch, std::move(target.asked));
    };
    // The last target's copies are made on this thread, which would otherwise only wait.
    std::vector<std::thread> workers;
    for (std::size_t t = 0; t < targets.size(); ++t) {
      if (!own_threads_ || t + 1 == targets.size()) {
        copy_to(targets[t]);
        continue;
      }
      try {
        workers.emplace_back(copy_to, std::ref(targets[t]));
      } catch (const std::system_error&) {
        copy_to(targets[t]);  // no thread to be had: copy on the caller's
      }
    }
    for (std::thread& worker : workers) worker.join();
  }

  std::size_t holders = 1;
  std::string failures;
  for (CopyTarget& target : targets) {
    if (target.joining) {
      if (target.made.rv != CKR_OK)
        log::Get()->warn("{}: member {}, being reconciled, missed the new object: {}", function,
                         pool_.at(target.member).name(), target.made.error);
      continue;
    }
    if (target.made.rv == CKR_OK) {
      ++holders;
      continue;
    }
    // A member that cannot store what the home just stored would otherwise stay up without it.
    if (target.made.store_refused) TakeDownRefuser(pool_.at(target.member), "C_UnwrapKey (copy)");
    Outcome(pool_.at(target.member), "C_UnwrapKey", target.made.rv);
    failures += "; " + target.made.error;
  }
  if (copying && holders < QuorumSize()) {
    for (CopyTarget& target : targets)
      if (target.made.rv == CKR_OK) DestroyCopies(pool_.at(target.member), target.epoch, target.made.copies);
    DestroyMade(home, made, facts);
    log::Get()->error("{}: only {} of the {} members that must hold a new object do (replication.quorum); every copy "
                      "was removed{}",
                      function, holders, QuorumSize(), failures);
    return kQuorumLost;
  }
  if (!failures.empty())
    log::Get()->warn("{}: a member missed the new object; its rejoin or `p11ha sync` copies it{}", function, failures);
  if (choice.token && choice.keep_local)
    log::Get()->info("{}: the new key stays on member {} only (replication.non_extractable = \"local\")", function,
                     source.name());

  // Handles are registered under the instance that gave them out, not the member's current one:
  // after a restart in between, they are stale and dropped with that instance's other handles.
  const std::uint64_t source_epoch = PinnedEpoch::Of(&source, source.epoch());
  for (std::size_t i = 0; i < made.size(); ++i)
    out[i] = catalog_.Register(MemberHandle{source.index(), source_epoch, made[i]}, facts[i], owner.handle(),
                               std::move(read.search_keys[i]));
  for (std::size_t k = 0; k < read.copied.size(); ++k)
    for (CopyTarget& target : targets)
      if (target.made.rv == CKR_OK && target.made.copies[k] != CK_INVALID_HANDLE)
        catalog_.AddHolder(out[read.copied[k]], MemberHandle{target.member, target.epoch, target.made.copies[k]});
  if (!std::all_of(facts.begin(), facts.end(), [](const ObjectFacts& f) { return f.token; }))
    CopySessionObjects(owner, home, made, facts, out);
  return CKR_OK;
}

std::vector<std::size_t> Module::UpHolders(std::uint64_t mask) {
  std::vector<std::size_t> holders = pool_.Serving(mask);
  for (std::size_t i = 0; i < pool_.size(); ++i)
    if ((mask & (std::uint64_t{1} << i)) && pool_.at(i).up() &&
        std::find(holders.begin(), holders.end(), i) == holders.end())
      holders.push_back(i);
  return holders;
}

void Module::DestroyUnlistedCopies(VirtualSession& session, const ObjectView& object,
                                   std::vector<std::size_t>& reached) {
  if (!object.facts.token) return;
  for (std::size_t index = 0; index < pool_.size(); ++index) {
    // A holder that was not reached may be a joining member, which took a copy of the object
    // from its fan-out but is no destroy target until it serves.
    if (std::find(reached.begin(), reached.end(), index) != reached.end() ||
        !(pool_.at(index).up() || Joining(index)))
      continue;
    try {
      // The handles found below must not be used on an instance that replaced this one.
      PinnedEpoch pin(&pool_.at(index), pool_.at(index).epoch());
      Route route = RouteTo(session, index);
      MemberTokenSession token(*route.member, route.session);
      CK_OBJECT_CLASS object_class = object.facts.object_class;
      CK_BBOOL yes = CK_TRUE;
      CK_ATTRIBUTE match[] = {{CKA_CLASS, &object_class, sizeof object_class}, {CKA_TOKEN, &yes, sizeof yes}};
      std::vector<CK_OBJECT_HANDLE> found;
      if (token.FindObjects(match, found) != CKR_OK) continue;
      const CK_OBJECT_HANDLE domain_key = DomainKeyOn(*route.member);
      for (CK_OBJECT_HANDLE candidate : found) {
        replication::ObjectSummary summary;
        if (replication::ReadSummary(token, candidate, domain_key, config_.domain_key_label, summary) != CKR_OK ||
            summary.identity != object.facts.identity)
          continue;
        if (token.DestroyObject(candidate) == CKR_OK &&
            std::find(reached.begin(), reached.end(), index) == reached.end())
          reached.push_back(index);
      }
    } catch (const std::exception& e) {
      log::Get()->warn("C_DestroyObject: could not look for a copy on member {}: {}", pool_.at(index).name(),
                       e.what());
    }
  }
}

void Module::LeaveTombstones(VirtualSession& session, const ObjectView& object,
                             const std::vector<std::size_t>& reached) {
  bool missed = false;
  for (std::size_t i = 0; i < pool_.size(); ++i)
    if (std::find(reached.begin(), reached.end(), i) == reached.end() && !pool_.at(i).up()) missed = true;
  if (!object.facts.token || !missed) return;
  const bool is_private = login_.who() == LoginState::Who::kUser;
  for (std::size_t index : reached) {
    CK_RV rv = CKR_OK;
    try {
      Route route = RouteTo(session, index);
      MemberTokenSession token(*route.member, route.session);
      CK_OBJECT_HANDLE tombstone = CK_INVALID_HANDLE;
      rv = replication::CreateTombstone(token, object.facts.identity, is_private, tombstone);
    } catch (const CkError& e) {
      rv = e.rv();
    }
    if (rv != CKR_OK)
      log::Get()->error("C_DestroyObject: member {} took no tombstone ({}); a member that was down may bring the "
                        "object back",
                        pool_.at(index).name(), RvName(rv));
  }
}

}  // namespace p11ha
