// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace p11ha::replication {

// A domain's public fingerprint (see domain_key.h for its definition). It names a domain in
// share files, messages and the domain key's CKA_ID, and reveals nothing about the key.
using CheckValue = std::array<std::uint8_t, 8>;

inline std::string CheckValueHex(const CheckValue& value) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string hex;
  for (std::uint8_t byte : value) {
    hex += kDigits[byte >> 4];
    hex += kDigits[byte & 0xf];
  }
  return hex;
}

// Lower- or upper-case hex of exactly 16 digits.
inline std::optional<CheckValue> ParseCheckValueHex(std::string_view hex) {
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  CheckValue value{};
  if (hex.size() != 2 * value.size()) return std::nullopt;
  for (std::size_t i = 0; i < value.size(); ++i) {
    int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    value[i] = static_cast<std::uint8_t>(hi << 4 | lo);
  }
  return value;
}

}  // namespace p11ha::replication
