// SPDX-License-Identifier: Apache-2.0
#include "replication/shamir.h"

#include <openssl/rand.h>

#include <set>

namespace p11ha::replication::shamir {

// Branch-free on the operands: the bytes multiplied here are key material.
std::uint8_t GfMul(std::uint8_t a, std::uint8_t b) {
  unsigned x = a, y = b, product = 0;
  for (int bit = 0; bit < 8; ++bit) {
    product ^= x & (0u - (y & 1u));
    y >>= 1;
    unsigned carry = 0u - ((x >> 7) & 1u);
    x = ((x << 1) ^ (0x1bu & carry)) & 0xffu;
  }
  return static_cast<std::uint8_t>(product);
}

// a^254 = a^-1 in GF(2^8); a fixed square-and-multiply chain, so no table or branch on `a`.
std::uint8_t GfInv(std::uint8_t a) {
  std::uint8_t result = 1, power = a;
  for (int bit = 0; bit < 8; ++bit) {
    if ((254 >> bit) & 1) result = GfMul(result, power);
    power = GfMul(power, power);
  }
  return result;
}

std::vector<Share> Split(std::span<const std::uint8_t> secret, unsigned threshold, unsigned count) {
  if (secret.empty()) throw std::invalid_argument("shamir: empty secret");
  if (threshold < 1 || threshold > count || count > 255) {
    throw std::invalid_argument("shamir: need 1 <= threshold <= shares <= 255");
  }
  std::vector<Share> shares(count);
  for (unsigned i = 0; i < count; ++i) {
    shares[i].index = static_cast<std::uint8_t>(i + 1);
    shares[i].data = SecureBytes(secret);  // sized buffer in locked memory, overwritten below
  }
  // coefficients[k * (threshold - 1) + j] is the x^(j+1) coefficient of byte k's polynomial.
  std::vector<std::uint8_t> zeros((threshold - 1) * secret.size());
  SecureBytes coefficients(std::span<const std::uint8_t>(zeros.data(), zeros.size()));
  if (!coefficients.empty() &&
      RAND_bytes(coefficients.data(), static_cast<int>(coefficients.size())) != 1) {
    throw std::runtime_error("shamir: RAND_bytes failed");
  }
  for (std::size_t k = 0; k < secret.size(); ++k) {
    const std::uint8_t* c = coefficients.data() + k * (threshold - 1);
    for (Share& share : shares) {
      // Horner: f(x) = secret + x * (c0 + x * (c1 + ...)).
      std::uint8_t y = 0;
      for (unsigned j = threshold - 1; j > 0; --j) y = GfMul(y, share.index) ^ c[j - 1];
      share.data.data()[k] = GfMul(y, share.index) ^ secret[k];
    }
  }
  return shares;
}

SecureBytes Combine(std::span<const Share> shares) {
  if (shares.empty()) throw std::invalid_argument("shamir: no shares");
  std::set<std::uint8_t> seen;
  for (const Share& share : shares) {
    if (share.index == 0) throw std::invalid_argument("shamir: share index 0");
    if (!seen.insert(share.index).second) throw std::invalid_argument("shamir: repeated share index");
    if (share.data.size() != shares[0].data.size()) throw std::invalid_argument("shamir: shares differ in length");
  }
  // Lagrange basis at 0: l_i = prod_{j != i} x_j / (x_j - x_i); subtraction is XOR here.
  std::vector<std::uint8_t> basis(shares.size());
  for (std::size_t i = 0; i < shares.size(); ++i) {
    std::uint8_t numerator = 1, denominator = 1;
    for (std::size_t j = 0; j < shares.size(); ++j) {
      if (j == i) continue;
      numerator = GfMul(numerator, shares[j].index);
      denominator = GfMul(denominator, shares[j].index ^ shares[i].index);
    }
    basis[i] = GfMul(numerator, GfInv(denominator));
  }
  SecureBytes secret(std::span<const std::uint8_t>(shares[0].data.data(), shares[0].data.size()));
  for (std::size_t k = 0; k < secret.size(); ++k) {
    std::uint8_t value = 0;
    for (std::size_t i = 0; i < shares.size(); ++i) value ^= GfMul(basis[i], shares[i].data.data()[k]);
    secret.data()[k] = value;
  }
  return secret;
}

}  // namespace p11ha::replication::shamir
