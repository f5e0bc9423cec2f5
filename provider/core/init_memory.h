// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <p11-kit/pkcs11.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <set>

namespace p11ha {

// Signature starts a member has already accepted: the same key on the same member instance,
// with the same mechanism and parameter. Such a C_SignInit is not sent on its own; it goes to
// the member together with the operation's first step, as one call (operations.cpp). A member
// call is a hand-off to a call worker and back, and for a single-part signature that halves
// them. What the member would answer is known from the last time, so errors stay where the
// application expects them, at C_SignInit, except when something changed in between (README
// "Signing").
class InitMemory {
 public:
  // Only mechanisms whose parameter holds no pointer (FlatParameter) compare by their bytes.
  static bool Comparable(const CK_MECHANISM& mechanism);

  bool Accepted(std::size_t member, std::uint64_t epoch, CK_OBJECT_HANDLE member_key,
                const CK_MECHANISM& mechanism) const;
  void Remember(std::size_t member, std::uint64_t epoch, CK_OBJECT_HANDLE member_key, const CK_MECHANISM& mechanism);
  // A key was destroyed or changed, or the login changed: what was accepted may not be any more.
  void Forget();

 private:
  // Fixed size, so that a C_SignInit allocates nothing to look itself up. Flat parameters are
  // at most 24 bytes (CK_RSA_PKCS_PSS_PARAMS, CK_AES_CTR_PARAMS); a longer one is not kept.
  using Key = std::array<std::uint64_t, 9>;
  static constexpr std::size_t kParameterBytes = 4 * sizeof(std::uint64_t);  // Key[5..8]
  static std::optional<Key> KeyOf(std::size_t member, std::uint64_t epoch, CK_OBJECT_HANDLE member_key,
                                  const CK_MECHANISM& mechanism);
  // Enough for every key and mechanism an application signs with; past it, it starts again.
  static constexpr std::size_t kMostRemembered = 4096;
  mutable std::mutex mu_;  // a leaf lock, never held across a member call
  std::set<Key> accepted_;
};

}  // namespace p11ha
