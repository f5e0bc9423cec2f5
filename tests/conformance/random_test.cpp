// SPDX-License-Identifier: Apache-2.0
// PKCS#11 2.40 §5.15 (random number generation).
#include <catch2/catch.hpp>

#include "fixture.h"

namespace p11ha::conformance {
namespace {

TEST_CASE_METHOD(Fixture, "C_GenerateRandom gives different bytes each time",
                 "[conformance][random]") {
  Session session = Open();
  Bytes first(32, 0);
  Bytes second(32, 0);
  REQUIRE_RV(p11->C_GenerateRandom(session, first.data(), first.size()), CKR_OK);
  REQUIRE_RV(p11->C_GenerateRandom(session, second.data(), second.size()), CKR_OK);
  CHECK(first != second);
  CHECK(first != Bytes(32, 0));
  // Zero bytes is a valid request.
  CHECK_RV(p11->C_GenerateRandom(session, first.data(), 0), CKR_OK);
}

TEST_CASE_METHOD(Fixture, "C_SeedRandom", "[conformance][random]") {
  Session session = Open();
  Bytes seed = ToBytes("not much of a seed");
  // SoftHSM 2.6.1 mixes the seed in; a token may also answer CKR_RANDOM_SEED_NOT_SUPPORTED.
  CHECK_RV(p11->C_SeedRandom(session, seed.data(), seed.size()), CKR_OK);
  Bytes after(32, 0);
  CHECK_RV(p11->C_GenerateRandom(session, after.data(), after.size()), CKR_OK);
}

}  // namespace
}  // namespace p11ha::conformance
