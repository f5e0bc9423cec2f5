// SPDX-License-Identifier: Apache-2.0
// Balancing across three test members that hold the same key: one virtual object, signatures
// that verify against the seeded public key, and work spread as the policy says.
#include <atomic>
#include <catch2/catch.hpp>
#include <thread>

#include "support.h"

namespace p11ha::module_test {
namespace {

constexpr int kMembers = 3;
const Bytes kKeyId = {0x51, 0xed, 0x01};
constexpr const char* kKeyLabel = "seeded";

// Stages three test members, imports one P-256 pair into each token directly (not through
// p11ha) and writes a config with `policy`. Returns the seeded key.
P256Secret SeededCluster(const TempDir& dir, const std::string& policy) {
  StageMembers(dir.path(), kMembers);
  const P256Secret key = NewP256Secret();
  for (int i = 1; i <= kMembers; ++i) {
    SeedP256(MemberConf(dir.path(), i), "m" + std::to_string(i), key, kKeyId, kKeyLabel);
  }
  ConfigSpec spec;
  spec.members = TestMembers(dir.path(), kMembers);
  spec.policy = policy;
  spec.log_file = dir / "p11ha.log";
  UseConfig(dir / "p11ha.toml", spec);
  return key;
}

std::vector<CK_OBJECT_HANDLE> FindSeededPrivateKey(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE s) {
  CK_OBJECT_CLASS private_class = CKO_PRIVATE_KEY;
  Bytes id = kKeyId;
  return Find(f, s, {{CKA_CLASS, &private_class, sizeof private_class},
                     {CKA_ID, id.data(), id.size()}});
}

std::vector<int> SignCounts(const TempDir& dir) {
  std::vector<int> counts;
  for (int i = 1; i <= kMembers; ++i) {
    counts.push_back(MemberCount(MemberSo(dir.path(), i), "C_Sign"));
  }
  return counts;
}

TEST_CASE("round-robin spreads signatures over three members holding one key", "[integration]") {
  TempDir dir;
  const P256Secret key = SeededCluster(dir, "round-robin");
  CK_FUNCTION_LIST* f = P11ha();
  Initialized initialized;
  const CK_SESSION_HANDLE session = OpenSession(f);
  REQUIRE(Login(f, session, kUserPin) == CKR_OK);

  // The three member copies share class, key type, parameters, CKA_ID and CKA_LABEL: one
  // virtual object, as an application expects from a single token.
  const std::vector<CK_OBJECT_HANDLE> found = FindSeededPrivateKey(f, session);
  REQUIRE(found.size() == 1);
  CK_OBJECT_CLASS public_class = CKO_PUBLIC_KEY;
  Bytes id = kKeyId;
  const std::vector<CK_OBJECT_HANDLE> public_keys =
      Find(f, session,
           {{CKA_CLASS, &public_class, sizeof public_class}, {CKA_ID, id.data(), id.size()}});
  REQUIRE(public_keys.size() == 1);
  CHECK(EcPoint(f, session, public_keys[0]) == key.point);
  for (int i = 1; i <= kMembers; ++i) {
    INFO("member " << i << " was never asked to search");
    CHECK(MemberCount(MemberSo(dir.path(), i), "C_FindObjectsInit") >= 1);
  }
  const std::vector<int> before = SignCounts(dir);

  constexpr int kSignatures = 300;
  int verified = 0;
  for (int n = 0; n < kSignatures; ++n) {
    const Digest digest = Sha256("round-robin message " + std::to_string(n));
    CK_RV rv = CKR_OK;
    const Bytes signature = SignDigest(f, session, found[0], digest, &rv);
    INFO("signature " << n << ": " << RvText(rv));
    REQUIRE(rv == CKR_OK);
    verified += VerifyP256(key.point, digest, signature) ? 1 : 0;
  }
  CHECK(verified == kSignatures);

  const std::vector<int> after = SignCounts(dir);
  int total = 0;
  for (int i = 0; i < kMembers; ++i) {
    const int served = after[i] - before[i];
    INFO("member " << i + 1 << " served " << served << " of " << kSignatures);
    CHECK(served >= 60);
    total += served;
  }
  CHECK(total == kSignatures);
  CHECK(initialized.Finalize() == CKR_OK);
}

TEST_CASE("least-busy lets every member serve three signing threads", "[integration]") {
  TempDir dir;
  const P256Secret key = SeededCluster(dir, "least-busy");
  CK_FUNCTION_LIST* f = P11ha();
  Initialized initialized;
  const CK_SESSION_HANDLE first = OpenSession(f);
  REQUIRE(Login(f, first, kUserPin) == CKR_OK);
  const std::vector<CK_OBJECT_HANDLE> found = FindSeededPrivateKey(f, first);
  REQUIRE(found.size() == 1);
  const CK_OBJECT_HANDLE private_key = found[0];
  std::vector<CK_SESSION_HANDLE> sessions = {first, OpenSession(f), OpenSession(f)};
  const std::vector<int> before = SignCounts(dir);

  // Catch assertions are not thread-safe: the workers only count, the main thread asserts.
  constexpr int kPerThread = 100;
  std::atomic<int> signed_ok{0}, verified{0};
  std::atomic<CK_RV> first_error{CKR_OK};
  std::vector<std::thread> workers;
  for (int t = 0; t < 3; ++t) {
    workers.emplace_back([&, t] {
      for (int n = 0; n < kPerThread; ++n) {
        const Digest digest =
            Sha256("thread " + std::to_string(t) + " message " + std::to_string(n));
        CK_RV rv = CKR_OK;
        const Bytes signature = SignDigest(f, sessions[t], private_key, digest, &rv);
        if (rv != CKR_OK) {
          CK_RV none = CKR_OK;
          first_error.compare_exchange_strong(none, rv);
          continue;
        }
        ++signed_ok;
        if (VerifyP256(key.point, digest, signature)) ++verified;
      }
    });
  }
  for (std::thread& worker : workers) worker.join();

  INFO("first error: " << RvText(first_error.load()));
  REQUIRE(signed_ok == 3 * kPerThread);
  CHECK(verified == 3 * kPerThread);
  const std::vector<int> after = SignCounts(dir);
  int total = 0;
  for (int i = 0; i < kMembers; ++i) {
    const int served = after[i] - before[i];
    INFO("member " << i + 1 << " served " << served << " of " << 3 * kPerThread);
    CHECK(served > 0);
    total += served;
  }
  CHECK(total == 3 * kPerThread);
  CHECK(initialized.Finalize() == CKR_OK);
}

}  // namespace
}  // namespace p11ha::module_test
