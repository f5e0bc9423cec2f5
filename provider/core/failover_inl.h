// SPDX-License-Identifier: Apache-2.0
// Module::Failover, a template, so included by module.h.
#pragma once

namespace p11ha {

template <typename Attempt>
CK_RV Module::Failover(VirtualSession& session, std::uint64_t allowed, const char* function, Attempt&& attempt,
                       Choice choice, SessionUse use) {
  std::uint64_t refused = 0;  // members whose creation said CKR_GENERAL_ERROR (kCreationRefused)
  // Each pass takes a member down or out of `allowed`, so the loop ends.
  for (std::size_t pass = 0; pass <= 2 * pool_.size(); ++pass) {
    monitor_.Tick();
    const std::optional<std::size_t> index = choice == Choice::kFirst ? pool_.First(allowed) : pool_.Pick(allowed);
    if (!index) break;
    Member& member = pool_.at(*index);
    PinnedEpoch pin(&member, member.epoch());
    Route route{&member, CK_INVALID_HANDLE};
    CK_RV rv = use == SessionUse::kObjects ? session.ObjectSession(member, &route.session)
                                           : session.MemberSession(member, &route.session);
    if (rv == CKR_OK) rv = attempt(route);
    if (rv == kStaleRoute) continue;  // the member came back as a new instance: look again
    if (rv == kNotHere || rv == kCreationRefused) {
      if (rv == kCreationRefused) refused |= std::uint64_t{1} << *index;
      allowed &= ~(std::uint64_t{1} << *index);
      continue;
    }
    if (!IsDeviceClass(rv)) {
      if (rv == CKR_OK)
        for (std::size_t i = 0; refused != 0 && i < pool_.size(); ++i)
          if (refused & (std::uint64_t{1} << i)) TakeDownRefuser(pool_.at(i), function);
      return rv;
    }
    Outcome(member, function, rv);
    allowed &= ~(std::uint64_t{1} << *index);
  }
  return refused != 0 ? CKR_GENERAL_ERROR : CKR_DEVICE_ERROR;
}

}  // namespace p11ha
