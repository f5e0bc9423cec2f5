// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>
#include <span>
#include <stdexcept>
#include <vector>

#include "config/secure_bytes.h"

namespace p11ha::replication::shamir {

// One share: the polynomial evaluated at x = index (1..255), byte by byte.
struct Share {
  std::uint8_t index = 0;
  SecureBytes data;
};

// Splits `secret` into `count` shares of which any `threshold` rebuild it and fewer reveal
// nothing (Shamir over GF(2^8), one independent polynomial per byte, random coefficients
// from OpenSSL's RAND_bytes). Throws std::invalid_argument unless 1 <= threshold <= count <= 255
// and the secret is non-empty; std::runtime_error when the RNG fails.
std::vector<Share> Split(std::span<const std::uint8_t> secret, unsigned threshold, unsigned count);

// Interpolates the shares at x = 0. With fewer than the threshold the result is simply a wrong
// value: callers must know the threshold and check the result (the domain check value does).
// Throws std::invalid_argument on no shares, an index of 0, a repeated index or unequal lengths.
SecureBytes Combine(std::span<const Share> shares);

// GF(2^8) with the AES polynomial x^8 + x^4 + x^3 + x + 1; exposed for the tests.
std::uint8_t GfMul(std::uint8_t a, std::uint8_t b);
std::uint8_t GfInv(std::uint8_t a);  // GfInv(0) == 0

}  // namespace p11ha::replication::shamir
