// SPDX-License-Identifier: Apache-2.0
#include "provider/core/init_memory.h"

#include "provider/core/replay.h"

#include <cstring>

namespace p11ha {

bool InitMemory::Comparable(const CK_MECHANISM& mechanism) {
  return mechanism.pParameter == nullptr || mechanism.ulParameterLen == 0 || FlatParameter(mechanism.mechanism);
}

std::optional<InitMemory::Key> InitMemory::KeyOf(std::size_t member, std::uint64_t epoch,
                                                 CK_OBJECT_HANDLE member_key, const CK_MECHANISM& mechanism) {
  const std::size_t length = mechanism.pParameter == nullptr ? 0 : mechanism.ulParameterLen;
  if (!Comparable(mechanism) || length > kParameterBytes) return std::nullopt;
  Key key{member, epoch, member_key, mechanism.mechanism, length};
  if (length != 0) std::memcpy(&key[5], mechanism.pParameter, length);
  return key;
}

bool InitMemory::Accepted(std::size_t member, std::uint64_t epoch, CK_OBJECT_HANDLE member_key,
                          const CK_MECHANISM& mechanism) const {
  const auto key = KeyOf(member, epoch, member_key, mechanism);
  if (!key) return false;
  std::lock_guard lock(mu_);
  return accepted_.count(*key) != 0;
}

void InitMemory::Remember(std::size_t member, std::uint64_t epoch, CK_OBJECT_HANDLE member_key,
                          const CK_MECHANISM& mechanism) {
  const auto key = KeyOf(member, epoch, member_key, mechanism);
  if (!key) return;
  std::lock_guard lock(mu_);
  if (accepted_.size() >= kMostRemembered) accepted_.clear();
  accepted_.insert(*key);
}

void InitMemory::Forget() {
  std::lock_guard lock(mu_);
  accepted_.clear();
}

}  // namespace p11ha
