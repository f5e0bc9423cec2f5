// SPDX-License-Identifier: Apache-2.0
// Keeps a call from reaching a member instance newer than the handles it carries.
#pragma once

#include <p11-kit/pkcs11.h>

#include <cstdint>

namespace p11ha {

// Member::Execute's answer to a pinned call into a later epoch. Nothing reached the member:
// the caller looks its handles up again (Failover retries the same member), and the member is
// not blamed.
inline constexpr CK_RV kStaleRoute = CKR_VENDOR_DEFINED | 0x0FA13;

// Handles a member gives out belong to one instance of it (its epoch). A member that restarts
// gives the same numbers out again for other sessions and objects (research/p11-kit-remote.md
// Q4), so a call whose handles were looked up before a restart must not reach the new
// instance: it would act on another session or another key. The thread pins the epoch before
// it looks handles up, and Member::Execute refuses that member's calls once its epoch moved on.
// One member is pinned at a time per thread; an inner pin hides an outer one until it ends.
class PinnedEpoch {
 public:
  PinnedEpoch(const void* member, std::uint64_t epoch) : saved_(Slot()) { Slot() = {member, epoch}; }
  ~PinnedEpoch() { Slot() = saved_; }
  PinnedEpoch(const PinnedEpoch&) = delete;
  PinnedEpoch& operator=(const PinnedEpoch&) = delete;

  // The epoch this thread pinned `member` at, else `current`.
  static std::uint64_t Of(const void* member, std::uint64_t current) {
    const Pin& pin = Slot();
    return pin.member == member ? pin.epoch : current;
  }

  // Whether this thread pinned `member` at an epoch other than `current`.
  static bool Stale(const void* member, std::uint64_t current) {
    const Pin& pin = Slot();
    return pin.member == member && pin.epoch != current;
  }

 private:
  struct Pin {
    const void* member = nullptr;
    std::uint64_t epoch = 0;
  };
  static Pin& Slot() {
    thread_local Pin pin;
    return pin;
  }
  const Pin saved_;
};

}  // namespace p11ha
