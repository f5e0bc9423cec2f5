// SPDX-License-Identifier: Apache-2.0
// PKCS#11 2.40 §5.10 (message digesting), checked against OpenSSL.
#include <algorithm>
#include <catch2/catch.hpp>
#include <vector>

#include "fixture.h"
#include "openssl_helpers.h"

namespace p11ha::conformance {
namespace {

Bytes Message() {
  Bytes message;
  for (int i = 0; i < 5000; ++i) message.push_back(static_cast<CK_BYTE>(i * 31));
  return message;
}

struct Digesting : Fixture {
  Digesting() : session(Open()) {}

  void Init() {
    CK_MECHANISM mechanism{CKM_SHA256, nullptr, 0};
    REQUIRE_RV(p11->C_DigestInit(session, &mechanism), CKR_OK);
  }
  Bytes Final() {
    CK_ULONG length = 0;
    REQUIRE_RV(p11->C_DigestFinal(session, nullptr, &length), CKR_OK);
    Bytes digest(length);
    REQUIRE_RV(p11->C_DigestFinal(session, digest.data(), &length), CKR_OK);
    digest.resize(length);
    return digest;
  }

  // Whether a refused C_DigestKey ends the operation is not specified (SoftHSM keeps it
  // active, p11ha ends it), so the cases finish it either way without asserting.
  void EndDigest() {
    Bytes digest(64);
    CK_ULONG length = digest.size();
    p11->C_DigestFinal(session, digest.data(), &length);
  }

  Session session;
};

TEST_CASE_METHOD(Digesting, "CKM_SHA256 single-part equals OpenSSL", "[conformance][digest]") {
  for (Bytes message : {Message(), ToBytes("abc"), Bytes{}}) {
    INFO("message of " << message.size() << " bytes");
    // SoftHSM refuses a NULL pData even with length 0, so the empty message gets a pointer.
    CK_BYTE placeholder = 0;
    CK_BYTE_PTR data = message.empty() ? &placeholder : message.data();
    Init();
    CK_ULONG length = 0;
    REQUIRE_RV(p11->C_Digest(session, data, message.size(), nullptr, &length), CKR_OK);
    CHECK(length == 32);
    Bytes digest(length);
    REQUIRE_RV(p11->C_Digest(session, data, message.size(), digest.data(), &length), CKR_OK);
    CHECK(digest == Sha256(message));
    CHECK_RV(p11->C_Digest(session, data, message.size(), digest.data(), &length),
             CKR_OPERATION_NOT_INITIALIZED);
  }
}

TEST_CASE_METHOD(Digesting, "CKM_SHA256 multi-part equals OpenSSL", "[conformance][digest]") {
  Bytes message = Message();
  Init();
  for (size_t offset = 0; offset < message.size(); offset += 999) {
    const size_t part = std::min<size_t>(999, message.size() - offset);
    REQUIRE_RV(p11->C_DigestUpdate(session, message.data() + offset, part), CKR_OK);
  }
  CHECK(Final() == Sha256(message));
}

TEST_CASE_METHOD(Digesting, "A short digest buffer keeps the operation",
                 "[conformance][digest]") {
  Bytes message = Message();
  Init();
  Bytes digest(32);
  CK_ULONG length = 31;
  REQUIRE_RV(p11->C_Digest(session, message.data(), message.size(), digest.data(), &length),
             CKR_BUFFER_TOO_SMALL);
  CHECK(length == 32);
  REQUIRE_RV(p11->C_Digest(session, message.data(), message.size(), digest.data(), &length),
             CKR_OK);
  CHECK(digest == Sha256(message));
}

TEST_CASE_METHOD(Digesting, "Digest operation state rules", "[conformance][digest]") {
  Bytes message = ToBytes("abc");
  CK_MECHANISM mechanism{CKM_SHA256, nullptr, 0};
  CHECK_RV(p11->C_DigestUpdate(session, message.data(), message.size()),
           CKR_OPERATION_NOT_INITIALIZED);
  REQUIRE_RV(p11->C_DigestInit(session, &mechanism), CKR_OK);
  CHECK_RV(p11->C_DigestInit(session, &mechanism), CKR_OPERATION_ACTIVE);
  REQUIRE_RV(p11->C_DigestUpdate(session, message.data(), message.size()), CKR_OK);
  CHECK(Final() == Sha256(message));
  CK_MECHANISM bogus{CKM_VENDOR_DEFINED | 0x4242, nullptr, 0};
  CHECK_RV(p11->C_DigestInit(session, &bogus), CKR_MECHANISM_INVALID);
}

TEST_CASE_METHOD(Digesting, "C_DigestKey on secret keys", "[conformance][digest]") {
  session.Login();
  const Bytes value(32, 0x3c);
  Bytes prefix = ToBytes("prefix");
  Bytes expected = prefix;
  expected.insert(expected.end(), value.begin(), value.end());
  // SoftHSM 2.6.1 digests a sensitive secret key as readily as a non-sensitive one.
  for (bool sensitive : {false, true}) {
    INFO("CKA_SENSITIVE " << sensitive);
    Attributes flags;
    flags.Bool(CKA_SENSITIVE, sensitive);
    const CK_OBJECT_HANDLE key = ImportAes(session, value, flags);
    Init();
    REQUIRE_RV(p11->C_DigestUpdate(session, prefix.data(), prefix.size()), CKR_OK);
    REQUIRE_RV(p11->C_DigestKey(session, key), CKR_OK);
    CHECK(Final() == Sha256(expected));
  }
}

TEST_CASE_METHOD(Digesting, "C_DigestKey on keys that are not secret keys",
                 "[conformance][digest]") {
  session.Login();
  const KeyPair rsa = SharedRsa(session);
  Init();
  CHECK_RV(p11->C_DigestKey(session, rsa.private_key), CKR_KEY_INDIGESTIBLE);
  EndDigest();
  Init();
  CHECK_RV(p11->C_DigestKey(session, kBogusHandle), CKR_KEY_HANDLE_INVALID);
  EndDigest();

  // SoftHSM 2.6.1 digests any key that has a CKA_VALUE, so a sensitive EC private key's
  // scalar goes into the hash. PKCS#11 2.40 wants CKR_KEY_INDIGESTIBLE for a non-secret key.
  const KeyPair ec = GenerateEc(session, kP256Params);
  Init();
  CHECK_RV(p11->C_DigestKey(session, ec.private_key), CKR_OK);
  Final();
}

}  // namespace
}  // namespace p11ha::conformance
