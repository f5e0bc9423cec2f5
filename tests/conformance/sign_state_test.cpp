// SPDX-License-Identifier: Apache-2.0
// PKCS#11 2.40 §5.2 and §5.11-5.12: the life of a sign or verify operation — length queries,
// short buffers, what ends an operation, and the errors that must not start one.
#include <catch2/catch.hpp>

#include "fixture.h"
#include "openssl_helpers.h"

namespace p11ha::conformance {
namespace {

struct SignState : Fixture {
  SignState() : session(OpenLoggedIn()), rsa(SharedRsa(session)) {}

  CK_RV Init(CK_MECHANISM_TYPE type = CKM_SHA256_RSA_PKCS) {
    CK_MECHANISM mechanism{type, nullptr, 0};
    return p11->C_SignInit(session, &mechanism, rsa.private_key);
  }
  CK_RV SignInto(CK_BYTE_PTR signature, CK_ULONG* length) {
    return p11->C_Sign(session, message.data(), message.size(), signature, length);
  }
  CK_RV VerifyWith(Bytes signature) {
    CK_MECHANISM mechanism{CKM_SHA256_RSA_PKCS, nullptr, 0};
    REQUIRE_RV(p11->C_VerifyInit(session, &mechanism, rsa.public_key), CKR_OK);
    return p11->C_Verify(session, message.data(), message.size(), signature.data(),
                         signature.size());
  }

  Session session;
  KeyPair rsa;
  Bytes message = ToBytes("sign me");
};

TEST_CASE_METHOD(SignState, "A signature length query keeps the operation active",
                 "[conformance][sign][state]") {
  REQUIRE_RV(Init(), CKR_OK);
  CK_ULONG length = 0;
  REQUIRE_RV(SignInto(nullptr, &length), CKR_OK);
  CHECK(length == 256);
  REQUIRE_RV(SignInto(nullptr, &length), CKR_OK);  // asking twice is fine too
  Bytes signature(length);
  REQUIRE_RV(SignInto(signature.data(), &length), CKR_OK);
  CHECK(length == 256);
  CHECK_RV(VerifyWith(signature), CKR_OK);
}

TEST_CASE_METHOD(SignState, "A short signature buffer returns the length and keeps the operation",
                 "[conformance][sign][state]") {
  REQUIRE_RV(Init(), CKR_OK);
  Bytes signature(300, 0);
  CK_ULONG length = 10;
  REQUIRE_RV(SignInto(signature.data(), &length), CKR_BUFFER_TOO_SMALL);
  CHECK(length == 256);
  REQUIRE_RV(SignInto(signature.data(), &length), CKR_OK);
  REQUIRE(length == 256);
  signature.resize(length);
  CHECK_RV(VerifyWith(signature), CKR_OK);
}

TEST_CASE_METHOD(SignState, "Multi-part: a short C_SignFinal buffer keeps the operation",
                 "[conformance][sign][state]") {
  REQUIRE_RV(Init(), CKR_OK);
  REQUIRE_RV(p11->C_SignUpdate(session, message.data(), message.size()), CKR_OK);
  CK_ULONG length = 0;
  REQUIRE_RV(p11->C_SignFinal(session, nullptr, &length), CKR_OK);
  CHECK(length == 256);
  Bytes signature(length);
  length = 1;
  REQUIRE_RV(p11->C_SignFinal(session, signature.data(), &length), CKR_BUFFER_TOO_SMALL);
  CHECK(length == 256);
  REQUIRE_RV(p11->C_SignFinal(session, signature.data(), &length), CKR_OK);
  CHECK_RV(VerifyWith(signature), CKR_OK);
  CHECK_RV(p11->C_SignFinal(session, signature.data(), &length), CKR_OPERATION_NOT_INITIALIZED);
}

TEST_CASE_METHOD(SignState, "A successful C_Sign ends the operation",
                 "[conformance][sign][state]") {
  REQUIRE_RV(Init(), CKR_OK);
  Bytes signature(256);
  CK_ULONG length = signature.size();
  REQUIRE_RV(SignInto(signature.data(), &length), CKR_OK);
  CHECK_RV(SignInto(signature.data(), &length), CKR_OPERATION_NOT_INITIALIZED);
  CHECK_RV(p11->C_SignUpdate(session, message.data(), message.size()),
           CKR_OPERATION_NOT_INITIALIZED);
  REQUIRE_RV(Init(), CKR_OK);  // and a new one may start
  REQUIRE_RV(SignInto(signature.data(), &length), CKR_OK);
}

TEST_CASE_METHOD(SignState, "C_Sign without C_SignInit", "[conformance][sign][state]") {
  Bytes signature(256);
  CK_ULONG length = signature.size();
  CHECK_RV(SignInto(signature.data(), &length), CKR_OPERATION_NOT_INITIALIZED);
  CHECK_RV(p11->C_Verify(session, message.data(), message.size(), signature.data(), length),
           CKR_OPERATION_NOT_INITIALIZED);
}

TEST_CASE_METHOD(SignState, "A tampered signature returns CKR_SIGNATURE_INVALID",
                 "[conformance][sign][state]") {
  REQUIRE_RV(Init(), CKR_OK);
  Bytes signature(256);
  CK_ULONG length = signature.size();
  REQUIRE_RV(SignInto(signature.data(), &length), CKR_OK);
  signature[100] ^= 0x01;
  CHECK_RV(VerifyWith(signature), CKR_SIGNATURE_INVALID);
  // A failed C_Verify ends the operation like a successful one.
  CHECK_RV(p11->C_Verify(session, message.data(), message.size(), signature.data(),
                         signature.size()),
           CKR_OPERATION_NOT_INITIALIZED);

  // The same through C_VerifyFinal.
  CK_MECHANISM mechanism{CKM_SHA256_RSA_PKCS, nullptr, 0};
  REQUIRE_RV(p11->C_VerifyInit(session, &mechanism, rsa.public_key), CKR_OK);
  REQUIRE_RV(p11->C_VerifyUpdate(session, message.data(), message.size()), CKR_OK);
  CHECK_RV(p11->C_VerifyFinal(session, signature.data(), signature.size()),
           CKR_SIGNATURE_INVALID);

  // A tampered message fails the same way.
  signature[100] ^= 0x01;
  message.push_back('!');
  CHECK_RV(VerifyWith(signature), CKR_SIGNATURE_INVALID);
}

TEST_CASE_METHOD(SignState, "A signature of the wrong length", "[conformance][sign][state]") {
  REQUIRE_RV(Init(), CKR_OK);
  Bytes signature(256);
  CK_ULONG length = signature.size();
  REQUIRE_RV(SignInto(signature.data(), &length), CKR_OK);
  signature.pop_back();
  CHECK_RV(VerifyWith(signature), CKR_SIGNATURE_LEN_RANGE);
}

TEST_CASE_METHOD(SignState, "A key of the wrong type for the mechanism",
                 "[conformance][sign][state]") {
  // Where the mechanism's key family differs, SoftHSM refuses at init as the spec says.
  CK_MECHANISM hmac{CKM_SHA256_HMAC, nullptr, 0};
  CHECK_RV(p11->C_SignInit(session, &hmac, rsa.private_key), CKR_KEY_TYPE_INCONSISTENT);
  CHECK_RV(p11->C_VerifyInit(session, &hmac, rsa.public_key), CKR_KEY_TYPE_INCONSISTENT);

  // Between asymmetric families (and for an AES key under an RSA mechanism) SoftHSM 2.6.1
  // accepts the init and fails the signature with CKR_GENERAL_ERROR, which ends the operation.
  // The spec wants CKR_KEY_TYPE_INCONSISTENT from C_SignInit.
  const KeyPair ec = GenerateEc(session, kP256Params);
  const CK_OBJECT_HANDLE aes = GenerateAes(session);
  CK_MECHANISM ecdsa{CKM_ECDSA, nullptr, 0};
  CK_MECHANISM rsa_mechanism{CKM_SHA256_RSA_PKCS, nullptr, 0};
  struct Mismatch {
    const char* name;
    CK_MECHANISM* mechanism;
    CK_OBJECT_HANDLE key;
  };
  for (const Mismatch& mismatch : {Mismatch{"ECDSA with an RSA key", &ecdsa, rsa.private_key},
                                   Mismatch{"RSA with an EC key", &rsa_mechanism, ec.private_key},
                                   Mismatch{"RSA with an AES key", &rsa_mechanism, aes}}) {
    INFO(mismatch.name);
    REQUIRE_RV(p11->C_SignInit(session, mismatch.mechanism, mismatch.key), CKR_OK);
    Bytes signature(512);
    CK_ULONG length = signature.size();
    CHECK_RV(SignInto(signature.data(), &length), CKR_GENERAL_ERROR);
    CHECK_RV(SignInto(signature.data(), &length), CKR_OPERATION_NOT_INITIALIZED);
  }
  REQUIRE_RV(Init(), CKR_OK);
}

TEST_CASE_METHOD(SignState, "An invalid key handle is refused at C_SignInit",
                 "[conformance][sign][state]") {
  CK_MECHANISM mechanism{CKM_SHA256_RSA_PKCS, nullptr, 0};
  // PKCS#11 wants CKR_KEY_HANDLE_INVALID; SoftHSM 2.6.1 answers CKR_OBJECT_HANDLE_INVALID.
  const Divergence unknown_key{"init-unknown-key-handle", /*softhsm=*/CKR_OBJECT_HANDLE_INVALID,
                               /*p11ha=*/CKR_KEY_HANDLE_INVALID};
  CHECK_RV(p11->C_SignInit(session, &mechanism, kBogusHandle), Expected(unknown_key));
  CHECK_RV(p11->C_VerifyInit(session, &mechanism, kBogusHandle), Expected(unknown_key));
  REQUIRE_RV(Init(), CKR_OK);
}

TEST_CASE_METHOD(SignState, "C_SignInit while an operation is active", "[conformance][sign][state]") {
  REQUIRE_RV(Init(), CKR_OK);
  CHECK_RV(Init(), CKR_OPERATION_ACTIVE);
  CHECK_RV(Init(CKM_SHA256_RSA_PKCS_PSS), CKR_OPERATION_ACTIVE);
  // The first operation is unharmed.
  Bytes signature(256);
  CK_ULONG length = signature.size();
  REQUIRE_RV(SignInto(signature.data(), &length), CKR_OK);
  CHECK_RV(VerifyWith(signature), CKR_OK);
}

TEST_CASE_METHOD(SignState, "Unusable mechanisms and key roles", "[conformance][sign][state]") {
  CHECK_RV(Init(CKM_VENDOR_DEFINED | 0x4242), CKR_MECHANISM_INVALID);
  // A public key has no CKA_SIGN and a private key no CKA_VERIFY.
  CK_MECHANISM mechanism{CKM_SHA256_RSA_PKCS, nullptr, 0};
  CHECK_RV(p11->C_SignInit(session, &mechanism, rsa.public_key), CKR_KEY_FUNCTION_NOT_PERMITTED);
  CHECK_RV(p11->C_VerifyInit(session, &mechanism, rsa.private_key),
           CKR_KEY_FUNCTION_NOT_PERMITTED);
  REQUIRE_RV(Init(), CKR_OK);
}

TEST_CASE_METHOD(SignState, "C_SignUpdate on a single-part mechanism",
                 "[conformance][sign][state]") {
  const KeyPair ec = GenerateEc(session, kP256Params);
  CK_MECHANISM ecdsa{CKM_ECDSA, nullptr, 0};
  REQUIRE_RV(p11->C_SignInit(session, &ecdsa, ec.private_key), CKR_OK);
  // SoftHSM 2.6.1 answers CKR_OPERATION_NOT_INITIALIZED and ends the operation.
  CHECK_RV(p11->C_SignUpdate(session, message.data(), message.size()),
           CKR_OPERATION_NOT_INITIALIZED);
  Bytes signature(64);
  CK_ULONG length = signature.size();
  CHECK_RV(p11->C_Sign(session, message.data(), message.size(), signature.data(), &length),
           CKR_OPERATION_NOT_INITIALIZED);
}

TEST_CASE_METHOD(SignState, "A key without CKA_SIGN cannot sign", "[conformance][sign][state]") {
  const KeyPair ec = GenerateEc(session, kP256Params);
  Attributes no_sign;
  no_sign.Bool(CKA_SIGN, false);
  REQUIRE_RV(p11->C_SetAttributeValue(session, ec.private_key, no_sign.get(), no_sign.size()),
             CKR_OK);
  CK_MECHANISM mechanism{CKM_ECDSA, nullptr, 0};
  CHECK_RV(p11->C_SignInit(session, &mechanism, ec.private_key), CKR_KEY_FUNCTION_NOT_PERMITTED);
}

}  // namespace
}  // namespace p11ha::conformance
