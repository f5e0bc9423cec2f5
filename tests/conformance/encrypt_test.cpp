// SPDX-License-Identifier: Apache-2.0
// PKCS#11 2.40 §5.8-5.9 (encryption and decryption) with AES-256 GCM and CBC_PAD. Keys with a
// known value let OpenSSL check the ciphertext byte for byte.
#include <catch2/catch.hpp>
#include <vector>

#include "fixture.h"
#include "openssl_helpers.h"

namespace p11ha::conformance {
namespace {

const Bytes kKeyValue = [] {
  Bytes key(32);
  for (size_t i = 0; i < key.size(); ++i) key[i] = static_cast<CK_BYTE>(0xa0 + i);
  return key;
}();
const Bytes kIv12 = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
const Bytes kIv16 = {16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1};
const Bytes kAad = ToBytes("header that is authenticated");

Bytes Plaintext() {
  Bytes plain = ToBytes("attack at dawn; ");
  for (int i = 0; i < 100; ++i) plain.push_back(static_cast<CK_BYTE>(i));
  return plain;  // 116 bytes: not a multiple of the block size
}

std::vector<Bytes> Split(const Bytes& data) {
  const auto begin = data.begin();
  return {Bytes(begin, begin + 7), Bytes(begin + 7, begin + 27), Bytes(begin + 27, begin + 27),
          Bytes(begin + 27, data.end())};
}

// Holds the parameters a CK_MECHANISM points at, so they outlive the calls that use it.
struct Gcm {
  explicit Gcm(const Bytes& iv_bytes = kIv12) : iv(iv_bytes), aad(kAad) {
    params.pIv = iv.data();
    params.ulIvLen = iv.size();
    params.ulIvBits = iv.size() * 8;
    params.pAAD = aad.data();
    params.ulAADLen = aad.size();
    params.ulTagBits = 128;
  }
  CK_MECHANISM mechanism() { return CK_MECHANISM{CKM_AES_GCM, &params, sizeof params}; }
  Bytes iv;
  Bytes aad;
  CK_GCM_PARAMS params{};
};

struct Cbc {
  explicit Cbc(const Bytes& iv_bytes = kIv16) : iv(iv_bytes) {}
  CK_MECHANISM mechanism() {
    return CK_MECHANISM{CKM_AES_CBC_PAD, iv.data(), static_cast<CK_ULONG>(iv.size())};
  }
  Bytes iv;
};

// SoftHSM refuses a NULL data pointer even with a zero length (CKR_ARGUMENTS_BAD), so an
// empty part is passed as a valid pointer with length 0.
CK_BYTE_PTR NonNull(Bytes& bytes) {
  static CK_BYTE placeholder = 0;
  return bytes.empty() ? &placeholder : bytes.data();
}

using Transform = CK_RV (*)(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);

// One single-part call with a length query first; `Transform` is C_Encrypt or C_Decrypt.
Bytes SinglePart(CK_SESSION_HANDLE session, Transform transform, Bytes input) {
  CK_ULONG length = 0;
  REQUIRE_RV(transform(session, input.data(), input.size(), nullptr, &length), CKR_OK);
  Bytes output(length);
  REQUIRE_RV(transform(session, input.data(), input.size(), output.data(), &length), CKR_OK);
  REQUIRE(length <= output.size());
  output.resize(length);
  return output;
}

Bytes Encrypt(const Fixture& fixture, CK_SESSION_HANDLE session, CK_MECHANISM mechanism,
              CK_OBJECT_HANDLE key, const Bytes& plain) {
  REQUIRE_RV(fixture.p11->C_EncryptInit(session, &mechanism, key), CKR_OK);
  return SinglePart(session, fixture.p11->C_Encrypt, plain);
}

Bytes Decrypt(const Fixture& fixture, CK_SESSION_HANDLE session, CK_MECHANISM mechanism,
              CK_OBJECT_HANDLE key, const Bytes& cipher) {
  REQUIRE_RV(fixture.p11->C_DecryptInit(session, &mechanism, key), CKR_OK);
  return SinglePart(session, fixture.p11->C_Decrypt, cipher);
}

// Update calls may hold data back (GCM decryption releases nothing before the tag is checked),
// so each output buffer is sized generously and the outputs are concatenated.
Bytes EncryptParts(const Fixture& fixture, CK_SESSION_HANDLE session, CK_MECHANISM mechanism,
                   CK_OBJECT_HANDLE key, std::vector<Bytes> parts) {
  CK_FUNCTION_LIST_PTR p11 = fixture.p11;
  REQUIRE_RV(p11->C_EncryptInit(session, &mechanism, key), CKR_OK);
  Bytes output;
  for (Bytes& part : parts) {
    Bytes chunk(part.size() + 64);
    CK_ULONG length = chunk.size();
    REQUIRE_RV(
        p11->C_EncryptUpdate(session, NonNull(part), part.size(), chunk.data(), &length),
        CKR_OK);
    output.insert(output.end(), chunk.begin(), chunk.begin() + static_cast<long>(length));
  }
  Bytes last(64);
  CK_ULONG length = last.size();
  REQUIRE_RV(p11->C_EncryptFinal(session, last.data(), &length), CKR_OK);
  output.insert(output.end(), last.begin(), last.begin() + static_cast<long>(length));
  return output;
}

Bytes DecryptParts(const Fixture& fixture, CK_SESSION_HANDLE session, CK_MECHANISM mechanism,
                   CK_OBJECT_HANDLE key, std::vector<Bytes> parts) {
  CK_FUNCTION_LIST_PTR p11 = fixture.p11;
  REQUIRE_RV(p11->C_DecryptInit(session, &mechanism, key), CKR_OK);
  Bytes output;
  size_t total = 0;
  for (Bytes& part : parts) {
    total += part.size();
    Bytes chunk(total + 64);
    CK_ULONG length = chunk.size();
    REQUIRE_RV(
        p11->C_DecryptUpdate(session, NonNull(part), part.size(), chunk.data(), &length),
        CKR_OK);
    output.insert(output.end(), chunk.begin(), chunk.begin() + static_cast<long>(length));
  }
  Bytes last(total + 64);
  CK_ULONG length = last.size();
  REQUIRE_RV(p11->C_DecryptFinal(session, last.data(), &length), CKR_OK);
  output.insert(output.end(), last.begin(), last.begin() + static_cast<long>(length));
  return output;
}

TEST_CASE_METHOD(Fixture, "C_GenerateKey makes an AES-256 key", "[conformance][encrypt]") {
  Session session = OpenLoggedIn();
  const CK_OBJECT_HANDLE key = GenerateAes(session);
  CHECK(UlongAttribute(session, key, CKA_KEY_TYPE) == CKK_AES);
  CHECK(UlongAttribute(session, key, CKA_VALUE_LEN) == 32);
  CHECK(BoolAttribute(session, key, CKA_LOCAL));
  CHECK(BoolAttribute(session, key, CKA_ALWAYS_SENSITIVE));
  CK_ATTRIBUTE value{CKA_VALUE, nullptr, 0};
  CHECK_RV(p11->C_GetAttributeValue(session, key, &value, 1), CKR_ATTRIBUTE_SENSITIVE);

  Gcm gcm;
  const Bytes cipher = Encrypt(*this, session, gcm.mechanism(), key, Plaintext());
  CHECK(cipher.size() == Plaintext().size() + 16);
  CHECK(Decrypt(*this, session, gcm.mechanism(), key, cipher) == Plaintext());
}

TEST_CASE_METHOD(Fixture, "CKM_AES_GCM single and multi-part", "[conformance][encrypt][gcm]") {
  Session session = OpenLoggedIn();
  const CK_OBJECT_HANDLE key = ImportAes(session, kKeyValue);
  const Bytes expected = AesGcmEncrypt(kKeyValue, kIv12, kAad, Plaintext());
  Gcm gcm;

  const Bytes single = Encrypt(*this, session, gcm.mechanism(), key, Plaintext());
  CHECK(single == expected);  // ciphertext followed by the 16-byte tag
  CHECK(Decrypt(*this, session, gcm.mechanism(), key, single) == Plaintext());

  CHECK(EncryptParts(*this, session, gcm.mechanism(), key, Split(Plaintext())) == expected);
  CHECK(DecryptParts(*this, session, gcm.mechanism(), key, Split(expected)) == Plaintext());
}

TEST_CASE_METHOD(Fixture, "CKM_AES_CBC_PAD single and multi-part", "[conformance][encrypt][cbc]") {
  Session session = OpenLoggedIn();
  const CK_OBJECT_HANDLE key = ImportAes(session, kKeyValue);
  const Bytes expected = AesCbcPadEncrypt(kKeyValue, kIv16, Plaintext());
  REQUIRE(expected.size() == 128);
  Cbc cbc;

  const Bytes single = Encrypt(*this, session, cbc.mechanism(), key, Plaintext());
  CHECK(single == expected);
  CHECK(Decrypt(*this, session, cbc.mechanism(), key, single) == Plaintext());

  CHECK(EncryptParts(*this, session, cbc.mechanism(), key, Split(Plaintext())) == expected);
  CHECK(DecryptParts(*this, session, cbc.mechanism(), key, Split(expected)) == Plaintext());

  // A whole block of padding when the input is block-aligned.
  const Bytes aligned(32, 0x11);
  CHECK(Encrypt(*this, session, cbc.mechanism(), key, aligned).size() == 48);
}

TEST_CASE_METHOD(Fixture, "Output length queries and short buffers", "[conformance][encrypt]") {
  Session session = OpenLoggedIn();
  const CK_OBJECT_HANDLE key = ImportAes(session, kKeyValue);
  Bytes plain = Plaintext();

  SECTION("C_Encrypt with GCM") {
    Gcm gcm;
    CK_MECHANISM mechanism = gcm.mechanism();
    REQUIRE_RV(p11->C_EncryptInit(session, &mechanism, key), CKR_OK);
    CK_ULONG length = 0;
    REQUIRE_RV(p11->C_Encrypt(session, plain.data(), plain.size(), nullptr, &length), CKR_OK);
    CHECK(length >= plain.size() + 16);
    Bytes cipher(plain.size() + 16);
    length = 5;
    REQUIRE_RV(p11->C_Encrypt(session, plain.data(), plain.size(), cipher.data(), &length),
               CKR_BUFFER_TOO_SMALL);
    CHECK(length >= plain.size() + 16);
    length = cipher.size();
    REQUIRE_RV(p11->C_Encrypt(session, plain.data(), plain.size(), cipher.data(), &length),
               CKR_OK);
    CHECK(length == plain.size() + 16);
    CHECK(cipher == AesGcmEncrypt(kKeyValue, kIv12, kAad, plain));
    CHECK_RV(p11->C_Encrypt(session, plain.data(), plain.size(), cipher.data(), &length),
             CKR_OPERATION_NOT_INITIALIZED);
  }
  SECTION("C_Decrypt with CBC_PAD") {
    Cbc cbc;
    Bytes cipher = AesCbcPadEncrypt(kKeyValue, kIv16, plain);
    CK_MECHANISM mechanism = cbc.mechanism();
    REQUIRE_RV(p11->C_DecryptInit(session, &mechanism, key), CKR_OK);
    CK_ULONG length = 0;
    REQUIRE_RV(p11->C_Decrypt(session, cipher.data(), cipher.size(), nullptr, &length), CKR_OK);
    CHECK(length >= plain.size());  // an upper bound: the padding is unknown until decrypted
    Bytes output(length);
    CK_ULONG short_length = 3;
    REQUIRE_RV(p11->C_Decrypt(session, cipher.data(), cipher.size(), output.data(), &short_length),
               CKR_BUFFER_TOO_SMALL);
    CHECK(short_length >= plain.size());
    REQUIRE_RV(p11->C_Decrypt(session, cipher.data(), cipher.size(), output.data(), &length),
               CKR_OK);
    output.resize(length);
    CHECK(output == plain);
  }
}

TEST_CASE_METHOD(Fixture, "Encrypt operation state rules", "[conformance][encrypt]") {
  Session session = OpenLoggedIn();
  const CK_OBJECT_HANDLE key = ImportAes(session, kKeyValue);
  Cbc cbc;
  CK_MECHANISM mechanism = cbc.mechanism();
  Bytes plain = Plaintext();
  Bytes cipher(256);
  CK_ULONG length = cipher.size();
  CHECK_RV(p11->C_Encrypt(session, plain.data(), plain.size(), cipher.data(), &length),
           CKR_OPERATION_NOT_INITIALIZED);
  REQUIRE_RV(p11->C_EncryptInit(session, &mechanism, key), CKR_OK);
  CHECK_RV(p11->C_EncryptInit(session, &mechanism, key), CKR_OPERATION_ACTIVE);
  REQUIRE_RV(p11->C_Encrypt(session, plain.data(), plain.size(), cipher.data(), &length), CKR_OK);
  CHECK(length == 128);
}

TEST_CASE_METHOD(Fixture, "Decrypting a tampered GCM ciphertext", "[conformance][encrypt][gcm]") {
  Session session = OpenLoggedIn();
  const CK_OBJECT_HANDLE key = ImportAes(session, kKeyValue);
  Bytes cipher = AesGcmEncrypt(kKeyValue, kIv12, kAad, Plaintext());
  cipher[5] ^= 0x80;
  Gcm gcm;
  CK_MECHANISM mechanism = gcm.mechanism();
  REQUIRE_RV(p11->C_DecryptInit(session, &mechanism, key), CKR_OK);
  Bytes output(cipher.size());
  CK_ULONG length = output.size();
  // PKCS#11 2.40 wants CKR_ENCRYPTED_DATA_INVALID for a failed tag check; SoftHSM 2.6.1
  // answers CKR_GENERAL_ERROR.
  CHECK_RV(p11->C_Decrypt(session, cipher.data(), cipher.size(), output.data(), &length),
           CKR_GENERAL_ERROR);
  // The failure ended the operation.
  CHECK_RV(p11->C_Decrypt(session, cipher.data(), cipher.size(), output.data(), &length),
           CKR_OPERATION_NOT_INITIALIZED);
}

// PKCS#11 2.40 wants CKR_MECHANISM_PARAM_INVALID for all of these. SoftHSM 2.6.1 answers
// CKR_MECHANISM_INVALID for a short CBC IV, CKR_ARGUMENTS_BAD for a missing IV, a bad tag
// length or a parameter block of the wrong size, and accepts a GCM IV of any length, even 0.
TEST_CASE_METHOD(Fixture, "Bad IVs and mechanism parameters", "[conformance][encrypt]") {
  Session session = OpenLoggedIn();
  const CK_OBJECT_HANDLE key = ImportAes(session, kKeyValue);
  SECTION("CBC_PAD with an 8-byte IV") {
    Cbc cbc(Bytes(8, 0));
    CK_MECHANISM mechanism = cbc.mechanism();
    CHECK_RV(p11->C_EncryptInit(session, &mechanism, key), CKR_MECHANISM_INVALID);
  }
  SECTION("CBC_PAD without an IV") {
    CK_MECHANISM mechanism{CKM_AES_CBC_PAD, nullptr, 0};
    CHECK_RV(p11->C_EncryptInit(session, &mechanism, key), CKR_ARGUMENTS_BAD);
  }
  SECTION("GCM with a parameter block of the wrong size") {
    Gcm gcm;
    CK_MECHANISM mechanism = gcm.mechanism();
    mechanism.ulParameterLen = sizeof(CK_GCM_PARAMS) - 8;
    CHECK_RV(p11->C_EncryptInit(session, &mechanism, key), CKR_ARGUMENTS_BAD);
  }
  SECTION("GCM with a 20-bit tag") {
    Gcm gcm;
    gcm.params.ulTagBits = 20;
    CK_MECHANISM mechanism = gcm.mechanism();
    CHECK_RV(p11->C_EncryptInit(session, &mechanism, key), CKR_ARGUMENTS_BAD);
  }
  SECTION("GCM with an empty IV") {
    Gcm gcm(Bytes{});
    CK_MECHANISM mechanism = gcm.mechanism();
    REQUIRE_RV(p11->C_EncryptInit(session, &mechanism, key), CKR_OK);
    Bytes plain = Plaintext();
    Bytes cipher(plain.size() + 16);
    CK_ULONG length = cipher.size();
    CHECK_RV(p11->C_Encrypt(session, plain.data(), plain.size(), cipher.data(), &length), CKR_OK);
  }
  // Nothing was left active by the refusals.
  Cbc cbc;
  CK_MECHANISM mechanism = cbc.mechanism();
  REQUIRE_RV(p11->C_EncryptInit(session, &mechanism, key), CKR_OK);
}

TEST_CASE_METHOD(Fixture, "A key without CKA_ENCRYPT cannot encrypt", "[conformance][encrypt]") {
  Session session = OpenLoggedIn();
  Attributes decrypt_only;
  decrypt_only.Bool(CKA_ENCRYPT, false);
  const CK_OBJECT_HANDLE key = ImportAes(session, kKeyValue, decrypt_only);
  Cbc cbc;
  CK_MECHANISM mechanism = cbc.mechanism();
  CHECK_RV(p11->C_EncryptInit(session, &mechanism, key), CKR_KEY_FUNCTION_NOT_PERMITTED);
  REQUIRE_RV(p11->C_DecryptInit(session, &mechanism, key), CKR_OK);
}

}  // namespace
}  // namespace p11ha::conformance
