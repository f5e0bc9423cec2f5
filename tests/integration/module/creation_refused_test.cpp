// SPDX-License-Identifier: Apache-2.0
// A member whose object store refuses new objects with CKR_GENERAL_ERROR while the others take
// them (what SoftHSM 2.6.1 does once it has lost a token; README "Behaviour notes"): the
// application's creation is made elsewhere, the member is taken down, and it gets the object
// when it is whole again. A refusal from every member is the application's answer and takes no member down.
// A login that one member keeps refusing with SoftHSM's lost-token answer, while the others
// take the PIN, is the same fault: the application is logged in and that member reconnects.
// Three staged test members (failover_support.h), priority order hsm-1, hsm-2, hsm-3.
#include <catch2/catch.hpp>

#include "failover_support.h"

namespace p11ha::module_test::failover {
namespace {

// As a SoftHSM that lost its token: keys are neither generated nor unwrapped. (C_CreateObject
// stays: SoftHSM still makes session objects then, such as the domain key's check-value probe.)
constexpr const char* kStoreRefuses = "fail C_GenerateKeyPair CKR_GENERAL_ERROR\nfail C_UnwrapKey CKR_GENERAL_ERROR";

std::size_t Occurrences(const std::string& text, const std::string& needle) {
  std::size_t count = 0;
  for (std::size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++count;
  return count;
}

std::size_t UpLines(const Cluster& c, int member) {
  return Occurrences(ReadFile(c.LogPath()), "member hsm-" + std::to_string(member + 1) + " up");
}

// Clears the member's faults and waits for it to serve again (a new "up" line after `ups`).
bool ClearedAndBack(const Cluster& c, int member, std::size_t ups) {
  c.Fault(member, "clear");
  return WaitFor([&] { return UpLines(c, member) > ups; }, kBackWithin);
}

// The fixture's private key again: C_Logout dropped the handles of private objects.
CK_OBJECT_HANDLE FixtureKey(const Cluster& c) {
  std::string label = "failover-sign";
  CK_OBJECT_CLASS private_key = CKO_PRIVATE_KEY;
  const std::vector<CK_OBJECT_HANDLE> found = Find(
      c.f(), c.session(), {{CKA_CLASS, &private_key, sizeof private_key}, {CKA_LABEL, label.data(), label.size()}});
  REQUIRE(found.size() == 1);
  return found[0];
}

// Signs with `key` until member `member` signs again (priority order sends the signature to
// the first serving holder), checking each signature against `point`.
bool SignsOn(const Cluster& c, int member, CK_OBJECT_HANDLE key, const Bytes& point, long long since) {
  const Digest digest = Sha256("refused elsewhere");
  int unverified = 0;
  const bool served = WaitFor(
      [&] {
        CK_RV rv = CKR_OK;
        const Bytes signature = SignDigest(c.f(), c.session(), key, digest, &rv);
        if (rv != CKR_OK || !VerifyP256(point, digest, signature)) ++unverified;
        return c.ServedSince(member, "C_Sign", since);
      },
      kBackWithin);
  return served && unverified == 0;
}

TEST_CASE("creation refused: a member whose store says CKR_GENERAL_ERROR is taken down, the key is made elsewhere "
          "and reaches it when it is whole",
          "[integration][failover]") {
  Cluster c;
  c.Fault(0, kStoreRefuses);
  const std::vector<int> generated = c.Counts("C_GenerateKeyPair");
  KeyPair pair;
  const CK_RV rv = TryGenerateP256(c.f(), c.session(), /*on_token=*/true, "refused-on-hsm-1", &pair);
  INFO("p11ha log (tail):\n" << c.LogTail());
  REQUIRE(rv == CKR_OK);
  // hsm-1 was asked first and refused; hsm-2 made the pair.
  CHECK(c.Count(0, "C_GenerateKeyPair") == generated[0] + 1);
  CHECK(c.Count(1, "C_GenerateKeyPair") == generated[1] + 1);
  CHECK(c.Count(2, "C_GenerateKeyPair") == generated[2]);
  const std::string log = ReadFile(c.LogPath());
  // Taken down at its refused copy, which the creation on hsm-2 made before it answered.
  CHECK_FALSE(LineWithAll(log, {"member hsm-1: C_UnwrapKey (copy) returned CKR_GENERAL_ERROR and made nothing"}).empty());
  const Bytes point = EcPoint(c.f(), c.session(), pair.public_key);

  // While its store refuses, hsm-1 does not serve the new key: signatures come from hsm-2.
  const long long refused_at = NowMs();
  CHECK(SignsOn(c, 1, pair.private_key, point, refused_at));
  CHECK_FALSE(c.ServedSince(0, "C_Sign", refused_at));

  // Probes reconnect it meanwhile, but its rejoin cannot copy the key, so it stays down.
  const std::size_t ups = UpLines(c, 0);
  std::this_thread::sleep_for(milliseconds(3 * kProbeIntervalMs));
  CHECK(UpLines(c, 0) == ups);
  const int unwraps = c.Count(0, "C_UnwrapKey");
  const bool back = ClearedAndBack(c, 0, ups);
  INFO("p11ha log after the fault was cleared (tail):\n" << c.LogTail());
  REQUIRE(back);
  // Its rejoin copied the key (one unwrap per key of the pair that travels: the private key;
  // the public key is created), and hsm-1, first in priority order, signs with it again.
  CHECK(c.Count(0, "C_UnwrapKey") > unwraps);
  CHECK(SignsOn(c, 0, pair.private_key, point, NowMs()));
}

TEST_CASE("creation refused: a member whose copy of a new key says CKR_GENERAL_ERROR is taken down and gets it at "
          "rejoin",
          "[integration][failover]") {
  Cluster c;
  c.Fault(1, kStoreRefuses);
  KeyPair pair;
  const CK_RV rv = TryGenerateP256(c.f(), c.session(), /*on_token=*/true, "copy-refused-on-hsm-2", &pair);
  INFO("p11ha log (tail):\n" << c.LogTail());
  REQUIRE(rv == CKR_OK);
  CHECK_FALSE(
      LineWithAll(ReadFile(c.LogPath()), {"member hsm-2: C_UnwrapKey (copy) returned CKR_GENERAL_ERROR"}).empty());
  const int unwraps = c.Count(1, "C_UnwrapKey");
  const bool back = ClearedAndBack(c, 1, UpLines(c, 1));
  INFO("p11ha log after the fault was cleared (tail):\n" << c.LogTail());
  REQUIRE(back);
  CHECK(c.Count(1, "C_UnwrapKey") > unwraps);
}

TEST_CASE("creation refused: CKR_GENERAL_ERROR from every member is the answer, and no member is taken down",
          "[integration][failover]") {
  Cluster c;
  for (int i = 0; i < kMembers; ++i) c.Fault(i, "fail C_GenerateKeyPair CKR_GENERAL_ERROR");
  const std::vector<int> generated = c.Counts("C_GenerateKeyPair");
  const std::vector<int> logins = c.Counts("C_Login");
  KeyPair pair;
  const CK_RV rv = TryGenerateP256(c.f(), c.session(), /*on_token=*/true, "refused-everywhere", &pair);
  INFO("p11ha log (tail):\n" << c.LogTail());
  CHECK(rv == CKR_GENERAL_ERROR);
  // Each member was asked once; none was blamed, so none reconnected (a reconnect logs in).
  for (int i = 0; i < kMembers; ++i) CHECK(c.Count(i, "C_GenerateKeyPair") == generated[i] + 1);
  CHECK(LineWithAll(ReadFile(c.LogPath()), {"made nothing, where another member made the object"}).empty());
  for (int i = 0; i < kMembers; ++i) c.Fault(i, "clear");
  // hsm-1 still serves the fixture's key at once, in the same session.
  CHECK(SignsOn(c, 0, c.key().private_key, c.point(), NowMs()));
  std::this_thread::sleep_for(milliseconds(2 * kProbeIntervalMs));
  CHECK(c.Counts("C_Login") == logins);
}

TEST_CASE("login refused: a member that keeps answering CKR_USER_PIN_NOT_INITIALIZED while the others take the "
          "PIN is taken down, and the application is logged in",
          "[integration][failover]") {
  Cluster c;
  REQUIRE(c.f()->C_Logout(c.session()) == CKR_OK);
  c.Fault(0, "fail C_Login CKR_USER_PIN_NOT_INITIALIZED");
  const CK_RV rv = Login(c.f(), c.session(), kUserPin);
  INFO("p11ha log (tail):\n" << c.LogTail());
  REQUIRE(rv == CKR_OK);
  CHECK_FALSE(LineWithAll(ReadFile(c.LogPath()), {"member hsm-1: C_Login still answered CKR_USER_PIN_NOT_INITIALIZED"})
                  .empty());
  // The login holds: a private key signs, on hsm-2 while hsm-1 is down.
  const CK_OBJECT_HANDLE key = FixtureKey(c);
  CHECK(SignsOn(c, 1, key, c.point(), NowMs()));
  const bool back = ClearedAndBack(c, 0, UpLines(c, 0));
  INFO("p11ha log after the fault was cleared (tail):\n" << c.LogTail());
  REQUIRE(back);
  CHECK(SignsOn(c, 0, key, c.point(), NowMs()));
}

TEST_CASE("login refused: CKR_USER_PIN_NOT_INITIALIZED from every member is the answer, and no member is taken down",
          "[integration][failover]") {
  Cluster c;
  REQUIRE(c.f()->C_Logout(c.session()) == CKR_OK);
  for (int i = 0; i < kMembers; ++i) c.Fault(i, "fail C_Login CKR_USER_PIN_NOT_INITIALIZED");
  const CK_RV rv = Login(c.f(), c.session(), kUserPin);
  INFO("p11ha log (tail):\n" << c.LogTail());
  CHECK(rv == CKR_USER_PIN_NOT_INITIALIZED);
  CHECK(LineWithAll(ReadFile(c.LogPath()), {"C_Login still answered"}).empty());
  for (int i = 0; i < kMembers; ++i) c.Fault(i, "clear");
  REQUIRE(Login(c.f(), c.session(), kUserPin) == CKR_OK);
  CHECK(SignsOn(c, 0, FixtureKey(c), c.point(), NowMs()));
}

}  // namespace
}  // namespace p11ha::module_test::failover
