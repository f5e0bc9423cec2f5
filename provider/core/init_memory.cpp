// SPDX-License-Identifier: Apache-2.0
#include "provider/core/init_memory.h"

#include "provider/core/replay.h"

namespace p11ha {
namespace {

void Append(std::string& key, const void* data, std::size_t size) {
  key.append(static_cast<const char*>(data), size);
}

}  // namespace

bool InitMemory::Comparable(const CK_MECHANISM& mechanism) {
  return mechanism.pParameter == nullptr || mechanism.ulParameterLen == 0 || FlatParameter(mechanism.mechanism);
}

std::string InitMemory::KeyOf(std::size_t member, std::uint64_t epoch, CK_OBJECT_HANDLE member_key,
                              const CK_MECHANISM& mechanism) {
  std::string key;
  key.reserve(4 * sizeof(std::uint64_t) + mechanism.ulParameterLen);
  Append(key, &member, sizeof member);
  Append(key, &epoch, sizeof epoch);
  Append(key, &member_key, sizeof member_key);
  Append(key, &mechanism.mechanism, sizeof mechanism.mechanism);
  if (mechanism.pParameter != nullptr) Append(key, mechanism.pParameter, mechanism.ulParameterLen);
  return key;
}

bool InitMemory::Accepted(std::size_t member, std::uint64_t epoch, CK_OBJECT_HANDLE member_key,
                          const CK_MECHANISM& mechanism) const {
  if (!Comparable(mechanism)) return false;
  const std::string key = KeyOf(member, epoch, member_key, mechanism);
  std::lock_guard lock(mu_);
  return accepted_.count(key) != 0;
}

void InitMemory::Remember(std::size_t member, std::uint64_t epoch, CK_OBJECT_HANDLE member_key,
                          const CK_MECHANISM& mechanism) {
  if (!Comparable(mechanism)) return;
  std::string key = KeyOf(member, epoch, member_key, mechanism);
  std::lock_guard lock(mu_);
  if (accepted_.size() >= kMostRemembered) accepted_.clear();
  accepted_.insert(std::move(key));
}

void InitMemory::Forget() {
  std::lock_guard lock(mu_);
  accepted_.clear();
}

}  // namespace p11ha
