// SPDX-License-Identifier: Apache-2.0
#include "replication/shamir.h"

#include <catch2/catch.hpp>
#include <algorithm>
#include <numeric>
#include <vector>

namespace p11ha::replication::shamir {
namespace {

std::vector<std::uint8_t> Bytes(const SecureBytes& secure) {
  return std::vector<std::uint8_t>(secure.data(), secure.data() + secure.size());
}

std::vector<std::uint8_t> Secret() {
  std::vector<std::uint8_t> secret(32);
  std::iota(secret.begin(), secret.end(), std::uint8_t{0xa0});
  return secret;
}

// A copy of the shares picked by `indices` (0-based positions in `shares`).
std::vector<Share> Pick(const std::vector<Share>& shares, const std::vector<std::size_t>& indices) {
  std::vector<Share> picked;
  for (std::size_t i : indices) {
    picked.push_back({shares[i].index, SecureBytes(std::span<const std::uint8_t>(shares[i].data.data(),
                                                                                  shares[i].data.size()))});
  }
  return picked;
}

// Every subset of {0..n-1} as a bit mask.
std::vector<std::size_t> Members(unsigned mask, unsigned n) {
  std::vector<std::size_t> members;
  for (unsigned i = 0; i < n; ++i)
    if (mask & (1u << i)) members.push_back(i);
  return members;
}

TEST_CASE("GF(2^8) arithmetic matches the AES field") {
  CHECK(GfMul(0x57, 0x83) == 0xc1);  // FIPS-197 section 4.2
  CHECK(GfMul(0x57, 0x13) == 0xfe);
  CHECK(GfMul(0, 0x9a) == 0);
  CHECK(GfInv(0) == 0);
  for (unsigned a = 1; a < 256; ++a) CHECK(GfMul(static_cast<std::uint8_t>(a), GfInv(static_cast<std::uint8_t>(a))) == 1);
}

TEST_CASE("any M of N shares rebuild the secret and M-1 do not") {
  const std::vector<std::uint8_t> secret = Secret();
  for (auto [m, n] : {std::pair{3u, 5u}, std::pair{2u, 3u}, std::pair{5u, 5u}, std::pair{1u, 4u}}) {
    std::vector<Share> shares = Split(secret, m, n);
    REQUIRE(shares.size() == n);
    for (unsigned i = 0; i < n; ++i) {
      CHECK(shares[i].index == i + 1);
      CHECK(shares[i].data.size() == secret.size());
    }
    for (unsigned mask = 1; mask < (1u << n); ++mask) {
      std::vector<std::size_t> subset = Members(mask, n);
      std::vector<std::uint8_t> rebuilt = Bytes(Combine(Pick(shares, subset)));
      INFO("threshold " << m << " of " << n << ", subset mask " << mask);
      if (subset.size() >= m) {
        CHECK(rebuilt == secret);
      } else {
        CHECK(rebuilt != secret);
      }
    }
  }
}

TEST_CASE("a share on its own says nothing when M > 1") {
  const std::vector<std::uint8_t> secret = Secret();
  std::vector<Share> shares = Split(secret, 2, 3);
  for (const Share& share : shares) CHECK(Bytes(share.data) != secret);
}

TEST_CASE("two splits of the same secret give different shares") {
  const std::vector<std::uint8_t> secret = Secret();
  CHECK(Bytes(Split(secret, 3, 5)[0].data) != Bytes(Split(secret, 3, 5)[0].data));
}

TEST_CASE("a changed share byte changes the rebuilt secret") {
  const std::vector<std::uint8_t> secret = Secret();
  std::vector<Share> shares = Split(secret, 3, 5);
  std::vector<Share> picked = Pick(shares, {1, 3, 4});
  picked[1].data.data()[7] ^= 0x01;
  CHECK(Bytes(Combine(picked)) != secret);
}

TEST_CASE("split and combine refuse bad arguments") {
  const std::vector<std::uint8_t> secret = Secret();
  CHECK_THROWS_AS(Split(secret, 0, 3), std::invalid_argument);
  CHECK_THROWS_AS(Split(secret, 4, 3), std::invalid_argument);
  CHECK_THROWS_AS(Split(secret, 2, 256), std::invalid_argument);
  CHECK_THROWS_AS(Split(std::span<const std::uint8_t>(), 2, 3), std::invalid_argument);

  std::vector<Share> shares = Split(secret, 2, 3);
  CHECK_THROWS_AS(Combine(std::span<const Share>()), std::invalid_argument);
  CHECK_THROWS_AS(Combine(Pick(shares, {0, 0})), std::invalid_argument);
  std::vector<Share> zero = Pick(shares, {0, 1});
  zero[0].index = 0;
  CHECK_THROWS_AS(Combine(zero), std::invalid_argument);
  std::vector<Share> uneven = Pick(shares, {0, 1});
  uneven[1].data = SecureBytes(std::string_view("short"));
  CHECK_THROWS_AS(Combine(uneven), std::invalid_argument);
}

}  // namespace
}  // namespace p11ha::replication::shamir
