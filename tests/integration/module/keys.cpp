// SPDX-License-Identifier: Apache-2.0
// PKCS#11 calls through p11ha, OpenSSL checks, and seeding a key into a member token directly.
#include <dlfcn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "support.h"

namespace p11ha::module_test {
namespace {

// DER of OID 1.2.840.10045.3.1.7 (P-256).
const CK_BYTE kP256Params[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};

CK_SLOT_ID SlotOfToken(CK_FUNCTION_LIST* f, const std::string& label) {
  CK_ULONG count = 0;
  if (f->C_GetSlotList(CK_TRUE, nullptr, &count) != CKR_OK) return ~CK_SLOT_ID{0};
  std::vector<CK_SLOT_ID> slots(count);
  if (f->C_GetSlotList(CK_TRUE, slots.data(), &count) != CKR_OK) return ~CK_SLOT_ID{0};
  for (CK_ULONG i = 0; i < count; ++i) {
    CK_TOKEN_INFO info{};
    if (f->C_GetTokenInfo(slots[i], &info) != CKR_OK) continue;
    std::string text(reinterpret_cast<const char*>(info.label), sizeof info.label);
    text.erase(text.find_last_not_of(' ') + 1);
    if (text == label) return slots[i];
  }
  return ~CK_SLOT_ID{0};
}

// The body of SeedP256's child: plain C calls, an exit code per step, no Catch.
int SeedInChild(const std::string& softhsm_conf, const std::string& token, const P256Secret& key,
                const Bytes& id, const std::string& label) {
  setenv("SOFTHSM2_CONF", softhsm_conf.c_str(), 1);
  void* library = dlopen(P11HA_SOFTHSM_MODULE, RTLD_NOW | RTLD_LOCAL);
  if (library == nullptr) return 10;
  auto get_list = reinterpret_cast<CK_C_GetFunctionList>(dlsym(library, "C_GetFunctionList"));
  CK_FUNCTION_LIST* f = nullptr;
  if (get_list == nullptr || get_list(&f) != CKR_OK) return 11;
  if (f->C_Initialize(nullptr) != CKR_OK) return 12;
  const CK_SLOT_ID slot = SlotOfToken(f, token);
  CK_SESSION_HANDLE session = CK_INVALID_HANDLE;
  if (f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &session) !=
      CKR_OK)
    return 13;
  std::string pin = kUserPin;
  if (f->C_Login(session, CKU_USER, reinterpret_cast<CK_UTF8CHAR_PTR>(pin.data()), pin.size()) !=
      CKR_OK)
    return 14;
  CK_OBJECT_CLASS private_class = CKO_PRIVATE_KEY, public_class = CKO_PUBLIC_KEY;
  CK_KEY_TYPE type = CKK_EC;
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  Bytes params(std::begin(kP256Params), std::end(kP256Params));
  Bytes id_copy = id, scalar = key.scalar;
  std::string label_copy = label;
  CK_ATTRIBUTE private_template[] = {
      {CKA_CLASS, &private_class, sizeof private_class},
      {CKA_KEY_TYPE, &type, sizeof type},
      {CKA_TOKEN, &yes, sizeof yes},
      {CKA_PRIVATE, &yes, sizeof yes},
      {CKA_SENSITIVE, &yes, sizeof yes},
      {CKA_EXTRACTABLE, &no, sizeof no},
      {CKA_SIGN, &yes, sizeof yes},
      {CKA_ID, id_copy.data(), id_copy.size()},
      {CKA_LABEL, label_copy.data(), label_copy.size()},
      {CKA_EC_PARAMS, params.data(), params.size()},
      {CKA_VALUE, scalar.data(), scalar.size()},
  };
  // CKA_EC_POINT is a DER OCTET STRING around the uncompressed point.
  Bytes point = {0x04, static_cast<unsigned char>(key.point.size())};
  point.insert(point.end(), key.point.begin(), key.point.end());
  CK_ATTRIBUTE public_template[] = {
      {CKA_CLASS, &public_class, sizeof public_class},
      {CKA_KEY_TYPE, &type, sizeof type},
      {CKA_TOKEN, &yes, sizeof yes},
      {CKA_PRIVATE, &no, sizeof no},
      {CKA_VERIFY, &yes, sizeof yes},
      {CKA_ID, id_copy.data(), id_copy.size()},
      {CKA_LABEL, label_copy.data(), label_copy.size()},
      {CKA_EC_PARAMS, params.data(), params.size()},
      {CKA_EC_POINT, point.data(), point.size()},
  };
  CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
  if (f->C_CreateObject(session, private_template, std::size(private_template), &handle) != CKR_OK)
    return 15;
  if (f->C_CreateObject(session, public_template, std::size(public_template), &handle) != CKR_OK)
    return 16;
  if (f->C_Finalize(nullptr) != CKR_OK) return 17;
  return 0;
}

}  // namespace

CK_SESSION_HANDLE OpenSession(CK_FUNCTION_LIST* f, CK_SLOT_ID slot) {
  CK_SESSION_HANDLE session = CK_INVALID_HANDLE;
  const CK_RV rv =
      f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &session);
  INFO("C_OpenSession -> " << RvText(rv));
  REQUIRE(rv == CKR_OK);
  return session;
}

CK_RV Login(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE session, const std::string& pin) {
  std::string copy = pin;
  return f->C_Login(session, CKU_USER, reinterpret_cast<CK_UTF8CHAR_PTR>(copy.data()), copy.size());
}

CK_RV SetPin(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE session, const std::string& old_pin,
             const std::string& new_pin) {
  std::string from = old_pin, to = new_pin;
  return f->C_SetPIN(session, reinterpret_cast<CK_UTF8CHAR_PTR>(from.data()), from.size(),
                     reinterpret_cast<CK_UTF8CHAR_PTR>(to.data()), to.size());
}

KeyPair GenerateP256(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE session, bool on_token,
                     const std::string& label) {
  KeyPair pair;
  const CK_RV rv = TryGenerateP256(f, session, on_token, label, &pair);
  INFO("C_GenerateKeyPair -> " << RvText(rv));
  REQUIRE(rv == CKR_OK);
  return pair;
}

CK_RV TryGenerateP256(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE session, bool on_token, const std::string& label,
                      KeyPair* pair) {
  Bytes params(std::begin(kP256Params), std::end(kP256Params));
  CK_BBOOL token = on_token ? CK_TRUE : CK_FALSE, yes = CK_TRUE;
  std::string label_copy = label;
  CK_ATTRIBUTE public_template[] = {
      {CKA_EC_PARAMS, params.data(), params.size()},
      {CKA_TOKEN, &token, sizeof token},
      {CKA_VERIFY, &yes, sizeof yes},
      {CKA_LABEL, label_copy.data(), label_copy.size()},
  };
  CK_ATTRIBUTE private_template[] = {
      {CKA_TOKEN, &token, sizeof token},
      {CKA_PRIVATE, &yes, sizeof yes},
      {CKA_SENSITIVE, &yes, sizeof yes},
      {CKA_SIGN, &yes, sizeof yes},
      {CKA_LABEL, label_copy.data(), label_copy.size()},
  };
  CK_MECHANISM mechanism{CKM_EC_KEY_PAIR_GEN, nullptr, 0};
  return f->C_GenerateKeyPair(session, &mechanism, public_template, std::size(public_template), private_template,
                              std::size(private_template), &pair->public_key, &pair->private_key);
}

Bytes SignDigest(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE key,
                 const Digest& digest, CK_RV* rv) {
  CK_MECHANISM mechanism{CKM_ECDSA, nullptr, 0};
  *rv = f->C_SignInit(session, &mechanism, key);
  if (*rv != CKR_OK) return {};
  Bytes signature(64);
  CK_ULONG length = signature.size();
  Digest input = digest;
  *rv = f->C_Sign(session, input.data(), input.size(), signature.data(), &length);
  if (*rv != CKR_OK) return {};
  signature.resize(length);
  return signature;
}

Bytes EcPoint(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE public_key) {
  Bytes der(128);
  CK_ATTRIBUTE attribute{CKA_EC_POINT, der.data(), der.size()};
  REQUIRE(f->C_GetAttributeValue(session, public_key, &attribute, 1) == CKR_OK);
  der.resize(attribute.ulValueLen);
  // Unwrap the DER OCTET STRING (04 41 ...) that SoftHSM stores.
  REQUIRE(der.size() == 67);
  REQUIRE(der[0] == 0x04);
  return Bytes(der.begin() + 2, der.end());
}

std::vector<CK_OBJECT_HANDLE> Find(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE session,
                                   std::vector<CK_ATTRIBUTE> query) {
  CK_RV rv = f->C_FindObjectsInit(session, query.data(), query.size());
  INFO("C_FindObjectsInit -> " << RvText(rv));
  REQUIRE(rv == CKR_OK);
  std::vector<CK_OBJECT_HANDLE> found;
  for (;;) {
    CK_OBJECT_HANDLE batch[16];
    CK_ULONG n = 0;
    rv = f->C_FindObjects(session, batch, std::size(batch), &n);
    REQUIRE(rv == CKR_OK);
    if (n == 0) break;
    found.insert(found.end(), batch, batch + n);
  }
  REQUIRE(f->C_FindObjectsFinal(session) == CKR_OK);
  return found;
}

CK_OBJECT_HANDLE CreateData(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE session, bool on_token,
                            bool is_private, const std::string& label) {
  CK_OBJECT_CLASS data_class = CKO_DATA;
  CK_BBOOL token = on_token ? CK_TRUE : CK_FALSE, priv = is_private ? CK_TRUE : CK_FALSE;
  // A value of its own, so that no two objects made here share an identity (DESIGN.md).
  static int serial = 0;
  std::string label_copy = label, value = "value " + std::to_string(++serial) + " of " + label;
  CK_ATTRIBUTE data_template[] = {
      {CKA_CLASS, &data_class, sizeof data_class},
      {CKA_TOKEN, &token, sizeof token},
      {CKA_PRIVATE, &priv, sizeof priv},
      {CKA_LABEL, label_copy.data(), label_copy.size()},
      {CKA_VALUE, value.data(), value.size()},
  };
  CK_OBJECT_HANDLE object = CK_INVALID_HANDLE;
  const CK_RV rv = f->C_CreateObject(session, data_template, std::size(data_template), &object);
  INFO("C_CreateObject(" << label << ") -> " << RvText(rv));
  REQUIRE(rv == CKR_OK);
  return object;
}

CK_RV ReadLabel(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object,
                std::string* label) {
  char buffer[64] = {};
  CK_ATTRIBUTE attribute{CKA_LABEL, buffer, sizeof buffer};
  const CK_RV rv = f->C_GetAttributeValue(session, object, &attribute, 1);
  if (rv == CKR_OK) label->assign(buffer, attribute.ulValueLen);
  return rv;
}

Digest Sha256(const std::string& text) {
  // No Catch assertion here: signing threads call it, and Catch is not thread-safe.
  Digest digest{};
  unsigned int length = 0;
  EVP_Digest(text.data(), text.size(), digest.data(), &length, EVP_sha256(), nullptr);
  return digest;
}

bool VerifyP256(const Bytes& point, const Digest& digest, const Bytes& signature) {
  if (signature.size() != 64) return false;
  std::unique_ptr<OSSL_PARAM_BLD, decltype(&OSSL_PARAM_BLD_free)> build(OSSL_PARAM_BLD_new(),
                                                                       &OSSL_PARAM_BLD_free);
  OSSL_PARAM_BLD_push_utf8_string(build.get(), OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0);
  OSSL_PARAM_BLD_push_octet_string(build.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(),
                                   point.size());
  std::unique_ptr<OSSL_PARAM, decltype(&OSSL_PARAM_free)> params(
      OSSL_PARAM_BLD_to_param(build.get()), &OSSL_PARAM_free);
  std::unique_ptr<EVP_PKEY_CTX, decltype(&EVP_PKEY_CTX_free)> from(
      EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr), &EVP_PKEY_CTX_free);
  EVP_PKEY* raw = nullptr;
  if (EVP_PKEY_fromdata_init(from.get()) != 1 ||
      EVP_PKEY_fromdata(from.get(), &raw, EVP_PKEY_PUBLIC_KEY, params.get()) != 1)
    return false;
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(raw, &EVP_PKEY_free);

  // PKCS#11 gives r||s; OpenSSL verifies DER.
  ECDSA_SIG* sig = ECDSA_SIG_new();
  ECDSA_SIG_set0(sig, BN_bin2bn(signature.data(), 32, nullptr),
                 BN_bin2bn(signature.data() + 32, 32, nullptr));
  unsigned char* der = nullptr;
  const int der_length = i2d_ECDSA_SIG(sig, &der);
  ECDSA_SIG_free(sig);
  std::unique_ptr<EVP_PKEY_CTX, decltype(&EVP_PKEY_CTX_free)> ctx(
      EVP_PKEY_CTX_new(key.get(), nullptr), &EVP_PKEY_CTX_free);
  const bool ok = der_length > 0 && EVP_PKEY_verify_init(ctx.get()) == 1 &&
                  EVP_PKEY_verify(ctx.get(), der, der_length, digest.data(), digest.size()) == 1;
  OPENSSL_free(der);
  return ok;
}

P256Secret NewP256Secret() {
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(
      EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"), &EVP_PKEY_free);
  REQUIRE(key != nullptr);
  P256Secret secret;
  BIGNUM* scalar = nullptr;
  REQUIRE(EVP_PKEY_get_bn_param(key.get(), OSSL_PKEY_PARAM_PRIV_KEY, &scalar) == 1);
  secret.scalar.resize(32);
  REQUIRE(BN_bn2binpad(scalar, secret.scalar.data(), 32) == 32);
  BN_clear_free(scalar);
  secret.point.resize(65);
  std::size_t length = 0;
  REQUIRE(EVP_PKEY_get_octet_string_param(key.get(), OSSL_PKEY_PARAM_PUB_KEY, secret.point.data(),
                                          secret.point.size(), &length) == 1);
  REQUIRE(length == 65);
  REQUIRE(secret.point[0] == 0x04);
  return secret;
}

void SeedP256(const std::string& softhsm_conf, const std::string& token, const P256Secret& key,
              const Bytes& id, const std::string& label) {
  std::fflush(nullptr);
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) _exit(SeedInChild(softhsm_conf, token, key, id, label));
  int status = 0;
  while (waitpid(child, &status, 0) < 0 && errno == EINTR) {
  }
  INFO("seeding token " << token << " of " << softhsm_conf
                        << " (exit codes: 10-12 load, 13 session, 14 login, 15-16 create)");
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
}

}  // namespace p11ha::module_test
