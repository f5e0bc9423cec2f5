// SPDX-License-Identifier: Apache-2.0
// Injected failures of operation calls must leave the SoftHSM session as a real failure would.
#include <array>
#include <catch2/catch.hpp>
#include <functional>
#include <string>
#include <vector>

#include "test_member_harness.h"

namespace p11ha::test_member::testing {
namespace {

TEST_CASE("an injected failure ends the active operation like a real one") {
  OneMember m;
  CK_FUNCTION_LIST* f = m.f;
  const CK_OBJECT_HANDLE aes = GenerateSecretKey(f, m.session, CKM_AES_KEY_GEN);
  const CK_OBJECT_HANDLE hmac = GenerateSecretKey(f, m.session, CKM_GENERIC_SECRET_KEY_GEN);
  const KeyPair rsa = GenerateRsaKey(f, m.session);
  CK_MECHANISM rsa_pkcs{CKM_RSA_PKCS, nullptr, 0};
  CK_MECHANISM sha256_rsa{CKM_SHA256_RSA_PKCS, nullptr, 0};
  std::array<CK_BYTE, 16> iv{};
  CK_MECHANISM ecdsa{CKM_ECDSA, nullptr, 0};
  CK_MECHANISM sha256_hmac{CKM_SHA256_HMAC, nullptr, 0};
  CK_MECHANISM cbc_pad{CKM_AES_CBC_PAD, iv.data(), iv.size()};
  CK_MECHANISM sha256{CKM_SHA256, nullptr, 0};
  std::array<CK_BYTE, 32> data{};
  std::vector<CK_BYTE> out(1024);
  CK_ULONG out_length = 0;
  const auto reset = [&] { out_length = out.size(); };

  struct Case {
    const char* function;
    std::function<CK_RV(CK_SESSION_HANDLE)> init;
    std::function<CK_RV(CK_SESSION_HANDLE)> call;
  };
  const auto sign_init = [&](CK_MECHANISM* mech, CK_OBJECT_HANDLE key) {
    return [=](CK_SESSION_HANDLE s) { return f->C_SignInit(s, mech, key); };
  };
  const auto verify_init = [&](CK_MECHANISM* mech, CK_OBJECT_HANDLE key) {
    return [=](CK_SESSION_HANDLE s) { return f->C_VerifyInit(s, mech, key); };
  };
  const auto encrypt_init = [&](CK_SESSION_HANDLE s) { return f->C_EncryptInit(s, &cbc_pad, aes); };
  const auto decrypt_init = [&](CK_SESSION_HANDLE s) { return f->C_DecryptInit(s, &cbc_pad, aes); };
  const auto digest_init = [&](CK_SESSION_HANDLE s) { return f->C_DigestInit(s, &sha256); };
  const std::vector<Case> cases = {
      {"C_Sign", sign_init(&ecdsa, m.key.private_key),
       [&](CK_SESSION_HANDLE s) {
         reset();
         return f->C_Sign(s, data.data(), data.size(), out.data(), &out_length);
       }},
      {"C_Sign", sign_init(&sha256_hmac, hmac),
       [&](CK_SESSION_HANDLE s) {
         reset();
         return f->C_Sign(s, data.data(), data.size(), out.data(), &out_length);
       }},
      {"C_Sign", sign_init(&rsa_pkcs, rsa.private_key),
       [&](CK_SESSION_HANDLE s) {
         reset();
         return f->C_Sign(s, data.data(), data.size(), out.data(), &out_length);
       }},
      {"C_SignUpdate", sign_init(&sha256_rsa, rsa.private_key),
       [&](CK_SESSION_HANDLE s) { return f->C_SignUpdate(s, data.data(), data.size()); }},
      {"C_SignFinal", sign_init(&sha256_rsa, rsa.private_key),
       [&](CK_SESSION_HANDLE s) {
         reset();
         return f->C_SignFinal(s, out.data(), &out_length);
       }},
      {"C_Verify", verify_init(&rsa_pkcs, rsa.public_key),
       [&](CK_SESSION_HANDLE s) {
         return f->C_Verify(s, data.data(), data.size(), out.data(), 128);
       }},
      {"C_VerifyFinal", verify_init(&sha256_rsa, rsa.public_key),
       [&](CK_SESSION_HANDLE s) { return f->C_VerifyFinal(s, out.data(), 128); }},
      {"C_Encrypt",
       [&](CK_SESSION_HANDLE s) { return f->C_EncryptInit(s, &rsa_pkcs, rsa.public_key); },
       [&](CK_SESSION_HANDLE s) {
         reset();
         return f->C_Encrypt(s, data.data(), data.size(), out.data(), &out_length);
       }},
      {"C_Decrypt",
       [&](CK_SESSION_HANDLE s) { return f->C_DecryptInit(s, &rsa_pkcs, rsa.private_key); },
       [&](CK_SESSION_HANDLE s) {
         reset();
         return f->C_Decrypt(s, out.data(), 128, out.data(), &out_length);
       }},
      {"C_SignUpdate", sign_init(&sha256_hmac, hmac),
       [&](CK_SESSION_HANDLE s) { return f->C_SignUpdate(s, data.data(), data.size()); }},
      {"C_SignFinal", sign_init(&sha256_hmac, hmac),
       [&](CK_SESSION_HANDLE s) {
         REQUIRE(f->C_SignUpdate(s, data.data(), data.size()) == CKR_OK);
         reset();
         return f->C_SignFinal(s, out.data(), &out_length);
       }},
      {"C_Verify", verify_init(&ecdsa, m.key.public_key),
       [&](CK_SESSION_HANDLE s) {
         return f->C_Verify(s, data.data(), data.size(), out.data(), 64);
       }},
      {"C_VerifyUpdate", verify_init(&sha256_hmac, hmac),
       [&](CK_SESSION_HANDLE s) { return f->C_VerifyUpdate(s, data.data(), data.size()); }},
      {"C_VerifyFinal", verify_init(&sha256_hmac, hmac),
       [&](CK_SESSION_HANDLE s) { return f->C_VerifyFinal(s, out.data(), 32); }},
      {"C_Encrypt", encrypt_init,
       [&](CK_SESSION_HANDLE s) {
         reset();
         return f->C_Encrypt(s, data.data(), data.size(), out.data(), &out_length);
       }},
      {"C_EncryptUpdate", encrypt_init,
       [&](CK_SESSION_HANDLE s) {
         reset();
         return f->C_EncryptUpdate(s, data.data(), data.size(), out.data(), &out_length);
       }},
      {"C_EncryptFinal", encrypt_init,
       [&](CK_SESSION_HANDLE s) {
         reset();
         return f->C_EncryptFinal(s, out.data(), &out_length);
       }},
      {"C_Decrypt", decrypt_init,
       [&](CK_SESSION_HANDLE s) {
         reset();
         return f->C_Decrypt(s, data.data(), data.size(), out.data(), &out_length);
       }},
      {"C_DecryptUpdate", decrypt_init,
       [&](CK_SESSION_HANDLE s) {
         reset();
         return f->C_DecryptUpdate(s, data.data(), data.size(), out.data(), &out_length);
       }},
      {"C_DecryptFinal", decrypt_init,
       [&](CK_SESSION_HANDLE s) {
         reset();
         return f->C_DecryptFinal(s, out.data(), &out_length);
       }},
      {"C_Digest", digest_init,
       [&](CK_SESSION_HANDLE s) {
         reset();
         return f->C_Digest(s, data.data(), data.size(), out.data(), &out_length);
       }},
      {"C_DigestUpdate", digest_init,
       [&](CK_SESSION_HANDLE s) { return f->C_DigestUpdate(s, data.data(), data.size()); }},
      {"C_DigestFinal", digest_init,
       [&](CK_SESSION_HANDLE s) {
         reset();
         return f->C_DigestFinal(s, out.data(), &out_length);
       }},
  };
  int index = 0;
  for (const auto& c : cases) {
    INFO("case " << index++ << ": " << c.function);
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    REQUIRE(f->C_OpenSession(m.member->SlotOf("m1"), CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr,
                             nullptr, &s) == CKR_OK);
    m.member->SetFault((std::string("fail ") + c.function + " CKR_DEVICE_ERROR times 1").c_str());
    REQUIRE(c.init(s) == CKR_OK);
    CHECK(c.call(s) == CKR_DEVICE_ERROR);
    CHECK(c.init(s) == CKR_OK);
    CHECK(f->C_CloseSession(s) == CKR_OK);
  }

  // CKR_BUFFER_TOO_SMALL does not end an operation, so nothing is ended for it.
  m.member->SetFault("fail C_Sign CKR_BUFFER_TOO_SMALL times 1");
  SignInit(f, m.session, m.key.private_key);
  reset();
  CHECK(f->C_Sign(m.session, data.data(), data.size(), out.data(), &out_length) ==
        CKR_BUFFER_TOO_SMALL);
  reset();
  CHECK(f->C_Sign(m.session, data.data(), data.size(), out.data(), &out_length) == CKR_OK);
}

}  // namespace
}  // namespace p11ha::test_member::testing
