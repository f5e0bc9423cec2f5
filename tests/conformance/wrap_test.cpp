// SPDX-License-Identifier: Apache-2.0
// PKCS#11 2.40 §5.14 (key wrapping): AES key wrap with and without padding, the mechanisms
// p11ha's replication depends on.
#include <catch2/catch.hpp>

#include "fixture.h"
#include "openssl_helpers.h"

namespace p11ha::conformance {
namespace {

const Bytes kKekValue(32, 0x4b);
const Bytes kTargetValue = [] {
  Bytes key(32);
  for (size_t i = 0; i < key.size(); ++i) key[i] = static_cast<CK_BYTE>(3 * i + 1);
  return key;
}();

// Keys made through p11ha are born CKA_WRAP_WITH_TRUSTED=TRUE so that only the domain key can
// ever wrap them (DESIGN.md "Replication"); an application's own KEK is not trusted.
constexpr Divergence kBornWrapWithTrusted{"born-wrap-with-trusted", /*softhsm=*/CKR_OK,
                                          /*p11ha=*/CKR_KEY_NOT_WRAPPABLE};

struct Wrapping : Fixture {
  Wrapping() : session(OpenLoggedIn()) {
    Attributes wrapper;
    wrapper.Bool(CKA_WRAP, true).Bool(CKA_UNWRAP, true);
    kek = ImportAes(session, kKekValue, wrapper);
  }

  Bytes Wrap(CK_MECHANISM_TYPE type, CK_OBJECT_HANDLE key) {
    CK_MECHANISM mechanism{type, nullptr, 0};
    CK_ULONG length = 0;
    REQUIRE_RV(p11->C_WrapKey(session, &mechanism, kek, key, nullptr, &length), CKR_OK);
    Bytes wrapped(length);
    REQUIRE_RV(p11->C_WrapKey(session, &mechanism, kek, key, wrapped.data(), &length), CKR_OK);
    wrapped.resize(length);
    return wrapped;
  }

  CK_RV Unwrap(CK_MECHANISM_TYPE type, Bytes wrapped, CK_OBJECT_HANDLE* key) {
    CK_MECHANISM mechanism{type, nullptr, 0};
    Attributes unwrapped;
    unwrapped.Ulong(CKA_CLASS, CKO_SECRET_KEY)
        .Ulong(CKA_KEY_TYPE, CKK_AES)
        .Bool(CKA_TOKEN, false)
        .Bool(CKA_PRIVATE, true)
        .Bool(CKA_SENSITIVE, true)
        .Bool(CKA_ENCRYPT, true)
        .Bool(CKA_DECRYPT, true)
        .Text(CKA_LABEL, "unwrapped");
    return p11->C_UnwrapKey(session, &mechanism, kek, wrapped.data(), wrapped.size(),
                            unwrapped.get(), unwrapped.size(), key);
  }

  // CBC with a fixed IV is deterministic, so equal keys give equal ciphertexts.
  Bytes Fingerprint(CK_OBJECT_HANDLE key) {
    Bytes iv(16, 0);
    CK_MECHANISM mechanism{CKM_AES_CBC_PAD, iv.data(), static_cast<CK_ULONG>(iv.size())};
    REQUIRE_RV(p11->C_EncryptInit(session, &mechanism, key), CKR_OK);
    Bytes plain = ToBytes("same key, same bytes");
    Bytes cipher(64);
    CK_ULONG length = cipher.size();
    REQUIRE_RV(p11->C_Encrypt(session, plain.data(), plain.size(), cipher.data(), &length),
               CKR_OK);
    cipher.resize(length);
    return cipher;
  }

  // False through p11ha: there the cases check the refusal instead of the blob.
  bool AppKeysWrap() const { return Expected(kBornWrapWithTrusted) == CKR_OK; }

  Session session;
  CK_OBJECT_HANDLE kek = CK_INVALID_HANDLE;
};

TEST_CASE_METHOD(Wrapping, "AES key wrap round trip", "[conformance][wrap]") {
  struct Case {
    const char* name;
    CK_MECHANISM_TYPE mechanism;
    bool pad;
  };
  for (const Case& wrap_case : {Case{"CKM_AES_KEY_WRAP", CKM_AES_KEY_WRAP, false},
                                Case{"CKM_AES_KEY_WRAP_PAD", CKM_AES_KEY_WRAP_PAD, true}}) {
    INFO(wrap_case.name);
    // A sensitive but extractable key: wrapping is the only way its value leaves the token.
    Attributes extractable;
    extractable.Bool(CKA_EXTRACTABLE, true).Bool(CKA_SENSITIVE, true);
    const CK_OBJECT_HANDLE generated = GenerateAes(session, extractable);
    if (!AppKeysWrap()) {
      CK_MECHANISM mechanism{wrap_case.mechanism, nullptr, 0};
      CK_ULONG length = 0;
      CHECK_RV(p11->C_WrapKey(session, &mechanism, kek, generated, nullptr, &length), Expected(kBornWrapWithTrusted));
      CHECK(BoolAttribute(session, generated, CKA_WRAP_WITH_TRUSTED));
      // Unwrapping with the application's KEK still works: a blob made off-token comes in.
      CK_OBJECT_HANDLE unwrapped = CK_INVALID_HANDLE;
      REQUIRE_RV(Unwrap(wrap_case.mechanism, AesKeyWrap(kKekValue, kTargetValue, wrap_case.pad), &unwrapped), CKR_OK);
      CHECK(Fingerprint(unwrapped) == Fingerprint(ImportAes(session, kTargetValue, extractable)));
      continue;
    }
    const Bytes wrapped = Wrap(wrap_case.mechanism, generated);
    CHECK(wrapped.size() == 40);  // 32 bytes of key + one 8-byte integrity block
    CK_OBJECT_HANDLE copy = CK_INVALID_HANDLE;
    REQUIRE_RV(Unwrap(wrap_case.mechanism, wrapped, &copy), CKR_OK);
    CHECK(copy != generated);
    CHECK(Fingerprint(copy) == Fingerprint(generated));
    CHECK_FALSE(BoolAttribute(session, copy, CKA_LOCAL));  // unwrapped, not generated

    // With known values, the blob must be exactly RFC 3394 / RFC 5649 output.
    const CK_OBJECT_HANDLE known = ImportAes(session, kTargetValue, extractable);
    CHECK(Wrap(wrap_case.mechanism, known) == AesKeyWrap(kKekValue, kTargetValue, wrap_case.pad));
  }
}

TEST_CASE_METHOD(Wrapping, "A short wrap buffer returns the length", "[conformance][wrap]") {
  Attributes extractable;
  extractable.Bool(CKA_EXTRACTABLE, true);
  const CK_OBJECT_HANDLE key = GenerateAes(session, extractable);
  CK_MECHANISM mechanism{CKM_AES_KEY_WRAP_PAD, nullptr, 0};
  Bytes wrapped(40);
  CK_ULONG length = 8;
  if (!AppKeysWrap()) {
    CHECK_RV(p11->C_WrapKey(session, &mechanism, kek, key, wrapped.data(), &length), Expected(kBornWrapWithTrusted));
    return;
  }
  REQUIRE_RV(p11->C_WrapKey(session, &mechanism, kek, key, wrapped.data(), &length),
             CKR_BUFFER_TOO_SMALL);
  CHECK(length == 40);
  REQUIRE_RV(p11->C_WrapKey(session, &mechanism, kek, key, wrapped.data(), &length), CKR_OK);
  CHECK(length == 40);
}

TEST_CASE_METHOD(Wrapping, "A non-extractable key cannot be wrapped", "[conformance][wrap]") {
  Attributes unextractable;
  unextractable.Bool(CKA_EXTRACTABLE, false);
  const CK_OBJECT_HANDLE key = GenerateAes(session, unextractable);
  // p11ha's default replication.non_extractable = "trusted-wrap" replaces the FALSE, and the
  // application reads back what the member holds.
  const Divergence replaced{"non-extractable-replaced", /*softhsm=*/CKR_KEY_UNEXTRACTABLE,
                            /*p11ha=*/CKR_KEY_NOT_WRAPPABLE};
  CHECK(BoolAttribute(session, key, CKA_EXTRACTABLE) == (Expected(replaced) != CKR_KEY_UNEXTRACTABLE));
  CK_MECHANISM mechanism{CKM_AES_KEY_WRAP_PAD, nullptr, 0};
  Bytes wrapped(64);
  CK_ULONG length = wrapped.size();
  CHECK_RV(p11->C_WrapKey(session, &mechanism, kek, key, wrapped.data(), &length), Expected(replaced));
  CHECK_RV(p11->C_WrapKey(session, &mechanism, kek, key, nullptr, &length), Expected(replaced));
}

TEST_CASE_METHOD(Wrapping, "Unwrapping a corrupted blob", "[conformance][wrap]") {
  Attributes extractable;
  extractable.Bool(CKA_EXTRACTABLE, true);
  // Made off-token, so the case also runs where application keys cannot be wrapped.
  Bytes wrapped = AesKeyWrap(kKekValue, kTargetValue, /*pad=*/true);
  wrapped[3] ^= 0x01;
  CK_OBJECT_HANDLE copy = CK_INVALID_HANDLE;
  // PKCS#11 2.40 wants CKR_WRAPPED_KEY_INVALID; SoftHSM 2.6.1 answers CKR_GENERAL_ERROR.
  CHECK_RV(Unwrap(CKM_AES_KEY_WRAP_PAD, wrapped, &copy), CKR_GENERAL_ERROR);
}

TEST_CASE_METHOD(Wrapping, "Wrapping needs a key that may wrap", "[conformance][wrap]") {
  Attributes extractable;
  extractable.Bool(CKA_EXTRACTABLE, true);
  const CK_OBJECT_HANDLE key = GenerateAes(session, extractable);
  // CKA_WRAP must be set to false explicitly: SoftHSM's default for secret keys is true.
  Attributes no_wrap;
  no_wrap.Bool(CKA_WRAP, false);
  const CK_OBJECT_HANDLE not_a_kek = GenerateAes(session, no_wrap);
  CK_MECHANISM mechanism{CKM_AES_KEY_WRAP_PAD, nullptr, 0};
  CK_ULONG length = 0;
  CHECK_RV(p11->C_WrapKey(session, &mechanism, not_a_kek, key, nullptr, &length),
           CKR_KEY_FUNCTION_NOT_PERMITTED);
  CHECK_RV(p11->C_WrapKey(session, &mechanism, kBogusHandle, key, nullptr, &length),
           CKR_WRAPPING_KEY_HANDLE_INVALID);
  CHECK_RV(p11->C_WrapKey(session, &mechanism, kek, kBogusHandle, nullptr, &length),
           CKR_KEY_HANDLE_INVALID);
}

}  // namespace
}  // namespace p11ha::conformance
