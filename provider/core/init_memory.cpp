// SPDX-License-Identifier: Apache-2.0
#include "provider/core/init_memory.h"

#include <cstring>

namespace p11ha {
namespace {

void Append(std::string& key, const void* data, std::size_t size) {
  key.append(static_cast<const char*>(data), size);
}

}  // namespace

bool InitMemory::Comparable(const CK_MECHANISM& mechanism) {
  if (mechanism.pParameter == nullptr || mechanism.ulParameterLen == 0) return true;
  switch (mechanism.mechanism) {
    // CK_RSA_PKCS_PSS_PARAMS: three numbers.
    case CKM_RSA_PKCS_PSS:
    case CKM_SHA1_RSA_PKCS_PSS:
    case CKM_SHA224_RSA_PKCS_PSS:
    case CKM_SHA256_RSA_PKCS_PSS:
    case CKM_SHA384_RSA_PKCS_PSS:
    case CKM_SHA512_RSA_PKCS_PSS:
      return mechanism.ulParameterLen == sizeof(CK_RSA_PKCS_PSS_PARAMS);
    default:
      return false;
  }
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
