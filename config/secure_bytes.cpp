// SPDX-License-Identifier: Apache-2.0
#include "config/secure_bytes.h"

#include <openssl/crypto.h>
#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

namespace p11ha {
namespace {

std::uint8_t* AllocateLocked(std::size_t size) {
  auto* p = static_cast<std::uint8_t*>(std::malloc(size));
  if (p == nullptr) throw std::bad_alloc();
  std::memset(p, 0, size);
  // mlock can fail under RLIMIT_MEMLOCK; the secret is still wiped, so carry on.
  (void)mlock(p, size);
  return p;
}

}  // namespace

SecureBytes::SecureBytes(std::span<const std::uint8_t> bytes) {
  if (bytes.empty()) return;
  data_ = AllocateLocked(bytes.size());
  std::memcpy(data_, bytes.data(), bytes.size());
  size_ = bytes.size();
}

SecureBytes::SecureBytes(std::string_view text)
    : SecureBytes(std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(text.data()), text.size())) {}

SecureBytes::~SecureBytes() { Clear(); }

SecureBytes::SecureBytes(SecureBytes&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

SecureBytes& SecureBytes::operator=(SecureBytes&& other) noexcept {
  if (this != &other) {
    Clear();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

void SecureBytes::Clear() {
  if (data_ == nullptr) return;
  OPENSSL_cleanse(data_, size_);
  munlock(data_, size_);
  std::free(data_);
  data_ = nullptr;
  size_ = 0;
}

bool SecureBytes::Equals(std::span<const std::uint8_t> other) const {
  return other.size() == size_ && (size_ == 0 || CRYPTO_memcmp(data_, other.data(), size_) == 0);
}

}  // namespace p11ha
