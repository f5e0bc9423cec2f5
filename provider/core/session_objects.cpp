// SPDX-License-Identifier: Apache-2.0
// Session objects outlive the member that made them (issue 4): each is copied, as a session
// object of the same virtual session, to the other members when it is made. The domain key's
// unwrap template leaves CKA_TOKEN free for exactly this (DESIGN.md "Replication").
#include <algorithm>

#include "provider/core/error.h"
#include "provider/core/log.h"
#include "provider/core/module.h"
#include "provider/member/member_token_session.h"
#include "replication/object_copy.h"

namespace p11ha {

void Module::CopySessionObjects(VirtualSession& owner, const Route& home, std::span<const CK_OBJECT_HANDLE> made,
                                std::span<const ObjectFacts> facts,
                                std::span<const CK_OBJECT_HANDLE> virtual_handles) {
  if (pool_.size() < 2) return;
  Member& source = *home.member;
  const CK_OBJECT_HANDLE source_key = DomainKeyOn(source);
  std::vector<replication::CopyPlan> plans;
  std::vector<std::size_t> planned;
  {
    MemberTokenSession source_token(source, home.session);
    for (std::size_t i = 0; i < made.size(); ++i) {
      if (facts[i].token || facts[i].hidden) continue;
      try {
        plans.push_back(replication::PrepareCopy(source_token, made[i], source_key, facts[i].object_class));
        planned.push_back(i);
      } catch (const replication::CopyError& e) {
        log::Get()->info("a session object stays on member {} only, so it dies with that member: {}", source.name(),
                         e.what());
      }
    }
  }
  if (plans.empty()) return;
  const bool keys = std::any_of(plans.begin(), plans.end(), [](const auto& plan) { return plan.by_wrap; });
  std::vector<std::size_t> up{source.index()};
  for (std::size_t i = 0; i < pool_.size(); ++i)
    if (i != source.index() && pool_.at(i).up()) up.push_back(i);
  const std::uint64_t agreeing = keys ? DomainAgreement(up) : ~std::uint64_t{0};
  if (!(agreeing & (std::uint64_t{1} << source.index()))) return;
  // On the caller's thread: the copies use the virtual session's own member sessions, which
  // only the thread holding the session may touch.
  for (std::size_t index : up) {
    if (index == source.index() || !(agreeing & (std::uint64_t{1} << index))) continue;
    Member& member = pool_.at(index);
    CK_SESSION_HANDLE member_session = CK_INVALID_HANDLE;
    if (CK_RV rv = owner.ObjectSession(member, &member_session); rv != CKR_OK) {
      Outcome(member, "C_OpenSession", rv);
      continue;
    }
    const CK_OBJECT_HANDLE target_key = keys ? DomainKeyOn(member) : CK_INVALID_HANDLE;
    MemberTokenSession target(member, member_session);
    for (std::size_t k = 0; k < plans.size(); ++k) {
      try {
        CK_OBJECT_HANDLE copy = replication::ApplyCopy(plans[k], target, target_key);
        catalog_.AddHolder(virtual_handles[planned[k]], MemberHandle{index, member.epoch(), copy});
      } catch (const std::exception& e) {
        log::Get()->warn("a session object was not copied to member {}: {}", member.name(), e.what());
      }
    }
  }
}

}  // namespace p11ha
