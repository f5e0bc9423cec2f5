// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace p11ha {

// A secret (PIN, key share) kept in memory that is locked against swapping and wiped on
// destruction, move-from and Clear(). Copying is deliberately impossible.
class SecureBytes {
 public:
  SecureBytes() = default;
  explicit SecureBytes(std::span<const std::uint8_t> bytes);
  explicit SecureBytes(std::string_view text);
  ~SecureBytes();
  SecureBytes(SecureBytes&& other) noexcept;
  SecureBytes& operator=(SecureBytes&& other) noexcept;
  SecureBytes(const SecureBytes&) = delete;
  SecureBytes& operator=(const SecureBytes&) = delete;

  void Clear();
  bool empty() const { return size_ == 0; }
  std::size_t size() const { return size_; }
  const std::uint8_t* data() const { return data_; }
  std::uint8_t* data() { return data_; }

  bool Equals(std::span<const std::uint8_t> other) const;

 private:
  std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace p11ha
