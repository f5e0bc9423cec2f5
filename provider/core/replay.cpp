// SPDX-License-Identifier: Apache-2.0
#include "provider/core/replay.h"

#include <openssl/crypto.h>
#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

namespace p11ha {

bool FlatParameter(CK_MECHANISM_TYPE type) {
  switch (type) {
    case CKM_AES_CBC:
    case CKM_AES_CBC_PAD:
    case CKM_AES_CTR:
    case CKM_AES_CFB8:
    case CKM_AES_CFB128:
    case CKM_AES_OFB:
    case CKM_AES_MAC_GENERAL:
    case CKM_AES_CMAC_GENERAL:
    case CKM_DES3_CBC:
    case CKM_DES3_CBC_PAD:
    case CKM_RSA_PKCS_PSS:
    case CKM_SHA1_RSA_PKCS_PSS:
    case CKM_SHA224_RSA_PKCS_PSS:
    case CKM_SHA256_RSA_PKCS_PSS:
    case CKM_SHA384_RSA_PKCS_PSS:
    case CKM_SHA512_RSA_PKCS_PSS:
    case CKM_SHA_1_HMAC_GENERAL:
    case CKM_SHA224_HMAC_GENERAL:
    case CKM_SHA256_HMAC_GENERAL:
    case CKM_SHA384_HMAC_GENERAL:
    case CKM_SHA512_HMAC_GENERAL:
    case CKM_MD5_HMAC_GENERAL:
      return true;
    default:
      return false;
  }
}

std::vector<CK_BYTE>& MechanismCopy::Keep(const void* data, std::size_t size) {
  auto* bytes = static_cast<const CK_BYTE*>(data);
  nested_.emplace_back(bytes, bytes + (data == nullptr ? 0 : size));
  return nested_.back();
}

std::optional<MechanismCopy> MechanismCopy::Of(const CK_MECHANISM& mechanism) {
  std::optional<MechanismCopy> copy{MechanismCopy{}};
  copy->mechanism_.mechanism = mechanism.mechanism;
  if (mechanism.pParameter == nullptr || mechanism.ulParameterLen == 0) {
    copy->mechanism_.ulParameterLen = mechanism.ulParameterLen;
    return copy;
  }
  auto* raw = static_cast<const CK_BYTE*>(mechanism.pParameter);
  copy->parameter_.assign(raw, raw + mechanism.ulParameterLen);
  copy->mechanism_.pParameter = copy->parameter_.data();
  copy->mechanism_.ulParameterLen = mechanism.ulParameterLen;
  // Room for the two buffers GCM needs, so the list of buffers is allocated once (a buffer's
  // bytes stay put whatever the list does: moving a vector keeps its storage).
  copy->nested_.reserve(2);
  switch (mechanism.mechanism) {
    case CKM_AES_GCM: {
      if (mechanism.ulParameterLen != sizeof(CK_GCM_PARAMS)) return std::nullopt;
      auto* gcm = reinterpret_cast<CK_GCM_PARAMS*>(copy->parameter_.data());
      gcm->pIv = copy->Keep(gcm->pIv, gcm->ulIvLen).data();
      gcm->pAAD = copy->Keep(gcm->pAAD, gcm->ulAADLen).data();
      return copy;
    }
    case CKM_RSA_PKCS_OAEP: {
      if (mechanism.ulParameterLen != sizeof(CK_RSA_PKCS_OAEP_PARAMS)) return std::nullopt;
      auto* oaep = reinterpret_cast<CK_RSA_PKCS_OAEP_PARAMS*>(copy->parameter_.data());
      oaep->pSourceData = copy->Keep(oaep->pSourceData, oaep->ulSourceDataLen).data();
      return copy;
    }
    default:
      if (!FlatParameter(mechanism.mechanism)) return std::nullopt;
      return copy;
  }
}

ReplayInput::~ReplayInput() { Clear(); }

ReplayInput::ReplayInput(ReplayInput&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      capacity_(std::exchange(other.capacity_, 0)) {}

ReplayInput& ReplayInput::operator=(ReplayInput&& other) noexcept {
  if (this != &other) {
    Clear();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    capacity_ = std::exchange(other.capacity_, 0);
  }
  return *this;
}

void ReplayInput::Clear() {
  if (data_ != nullptr) {
    OPENSSL_cleanse(data_, capacity_);
    munlock(data_, capacity_);
    std::free(data_);
  }
  data_ = nullptr;
  size_ = capacity_ = 0;
}

bool ReplayInput::Append(std::span<const CK_BYTE> part, std::size_t limit) {
  if (part.size() > limit - std::min(limit, size_)) {
    Clear();
    return false;
  }
  if (part.empty()) return true;
  if (size_ + part.size() > capacity_) {
    std::size_t capacity = std::max<std::size_t>({capacity_ * 2, size_ + part.size(), 256});
    capacity = std::min(capacity, std::max(limit, size_ + part.size()));
    auto* grown = static_cast<CK_BYTE*>(std::malloc(capacity));
    if (grown == nullptr) throw std::bad_alloc();
    std::memset(grown, 0, capacity);
    mlock(grown, capacity);  // best effort: RLIMIT_MEMLOCK may be small
    if (size_ > 0) std::memcpy(grown, data_, size_);
    std::size_t size = size_;
    Clear();
    data_ = grown;
    size_ = size;
    capacity_ = capacity;
  }
  std::memcpy(data_ + size_, part.data(), part.size());
  size_ += part.size();
  return true;
}

}  // namespace p11ha
