// SPDX-License-Identifier: Apache-2.0
// A signature start the member accepted before travels with the first step (README "Signing"):
// the member sees one C_SignInit for many signatures, every signature still verifies, and a
// start the member refuses after all is answered by that step and ends the operation.
#include <catch2/catch.hpp>

#include "support.h"

namespace p11ha::module_test {
namespace {

struct OneMember {
  explicit OneMember(const TempDir& dir) : so(MemberSo(dir.path(), 1)), f(Stage(dir)), session(OpenSession(f)) {
    REQUIRE(Login(f, session, kUserPin) == CKR_OK);
    keys = GenerateP256(f, session, true, "signing-test");
    point = EcPoint(f, session, keys.public_key);
  }
  static CK_FUNCTION_LIST* Stage(const TempDir& dir) {
    StageMembers(dir.path(), 1);
    ConfigSpec spec;
    spec.members = TestMembers(dir.path(), 1);
    spec.log_file = dir / "p11ha.log";
    UseConfig(dir / "p11ha.toml", spec);
    return P11ha();
  }
  // A signature through p11ha that verifies under OpenSSL.
  bool SignsAndVerifies(const std::string& text) {
    CK_RV rv = CKR_OK;
    const Digest digest = Sha256(text);
    Bytes signature = SignDigest(f, session, keys.private_key, digest, &rv);
    UNSCOPED_INFO(text << ": " << RvText(rv));
    return rv == CKR_OK && VerifyP256(point, digest, signature);
  }

  std::string so;
  CK_FUNCTION_LIST* f;
  Initialized initialized;
  CK_SESSION_HANDLE session;
  KeyPair keys;
  Bytes point;
};

CK_MECHANISM kEcdsa{CKM_ECDSA, nullptr, 0};

TEST_CASE("signing: a start the member accepted before goes with the first step, and every signature verifies",
          "[integration][signing]") {
  TempDir dir;
  OneMember m(dir);
  for (int i = 0; i < 5; ++i) REQUIRE(m.SignsAndVerifies("message " + std::to_string(i)));
  CHECK(MemberCount(m.so, "C_SignInit") == 5);  // the first sent alone, the others with their C_Sign
  CHECK(MemberCount(m.so, "C_Sign") == 5);

  // A length query as the first step keeps the operation going on the member.
  REQUIRE(m.f->C_SignInit(m.session, &kEcdsa, m.keys.private_key) == CKR_OK);
  Digest digest = Sha256("length first");
  CK_ULONG length = 0;
  REQUIRE(m.f->C_Sign(m.session, digest.data(), digest.size(), nullptr, &length) == CKR_OK);
  REQUIRE(length == 64);
  Bytes signature(length);
  REQUIRE(m.f->C_Sign(m.session, digest.data(), digest.size(), signature.data(), &length) == CKR_OK);
  CHECK(VerifyP256(m.point, digest, signature));

  // After a logout nothing is taken for granted (the private key's handle is void, as the
  // spec says); after a new login the key, found again, signs.
  REQUIRE(m.f->C_Logout(m.session) == CKR_OK);
  CHECK(m.f->C_SignInit(m.session, &kEcdsa, m.keys.private_key) != CKR_OK);
  REQUIRE(Login(m.f, m.session, kUserPin) == CKR_OK);
  std::string label = "signing-test";
  CK_OBJECT_CLASS private_class = CKO_PRIVATE_KEY;
  auto found = Find(m.f, m.session, {{CKA_CLASS, &private_class, sizeof private_class}, {CKA_LABEL, label.data(), label.size()}});
  REQUIRE(found.size() == 1);
  m.keys.private_key = found[0];
  REQUIRE(m.SignsAndVerifies("after a new login"));
}

TEST_CASE("signing: a start the member refuses after all is answered by the first step, which ends the operation",
          "[integration][signing]") {
  TempDir dir;
  OneMember m(dir);
  REQUIRE(m.SignsAndVerifies("accepted once"));
  const int starts = MemberCount(m.so, "C_SignInit");

  // As if another process took CKA_SIGN away from the key on the member token.
  SetMemberFault(m.so, "fail C_SignInit CKR_KEY_FUNCTION_NOT_PERMITTED");
  REQUIRE(m.f->C_SignInit(m.session, &kEcdsa, m.keys.private_key) == CKR_OK);
  Digest digest = Sha256("refused");
  Bytes signature(64);
  CK_ULONG length = signature.size();
  CHECK(m.f->C_Sign(m.session, digest.data(), digest.size(), signature.data(), &length) ==
        CKR_KEY_FUNCTION_NOT_PERMITTED);
  CHECK(MemberCount(m.so, "C_SignInit") == starts + 1);
  CHECK(MemberCount(m.so, "C_Sign") == 1);  // the step itself never reached the member
  length = signature.size();
  CHECK(m.f->C_Sign(m.session, digest.data(), digest.size(), signature.data(), &length) ==
        CKR_OPERATION_NOT_INITIALIZED);

  // The refusal is remembered: the next start is sent on its own, and refused at C_SignInit.
  CHECK(m.f->C_SignInit(m.session, &kEcdsa, m.keys.private_key) == CKR_KEY_FUNCTION_NOT_PERMITTED);
  SetMemberFault(m.so, "clear");
  REQUIRE(m.SignsAndVerifies("accepted again"));
}

}  // namespace
}  // namespace p11ha::module_test
