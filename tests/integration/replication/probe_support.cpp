// SPDX-License-Identifier: Apache-2.0
#include "probe_support.h"

#include <dlfcn.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include <cstdio>
#include <fstream>
#include <memory>

namespace replication_probe {

CK_FUNCTION_LIST* p11 = nullptr;
CK_BBOOL kTrue = CK_TRUE, kFalse = CK_FALSE;

namespace {

template <typename T, void (*Free)(T*)>
struct Deleter {
  void operator()(T* p) const { Free(p); }
};
using Pkey = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY, EVP_PKEY_free>>;
using PkeyCtx = std::unique_ptr<EVP_PKEY_CTX, Deleter<EVP_PKEY_CTX, EVP_PKEY_CTX_free>>;
using MdCtx = std::unique_ptr<EVP_MD_CTX, Deleter<EVP_MD_CTX, EVP_MD_CTX_free>>;
using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, Deleter<EVP_CIPHER_CTX, EVP_CIPHER_CTX_free>>;
using ParamBld = std::unique_ptr<OSSL_PARAM_BLD, Deleter<OSSL_PARAM_BLD, OSSL_PARAM_BLD_free>>;
using Params = std::unique_ptr<OSSL_PARAM, Deleter<OSSL_PARAM, OSSL_PARAM_free>>;
using Bignum = std::unique_ptr<BIGNUM, Deleter<BIGNUM, BN_free>>;
using EcdsaSig = std::unique_ptr<ECDSA_SIG, Deleter<ECDSA_SIG, ECDSA_SIG_free>>;
using X509Ptr = std::unique_ptr<X509, Deleter<X509, X509_free>>;

void Ssl(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(std::string("OpenSSL: ") + what + " failed");
}

Pkey PkeyFromData(const char* type, OSSL_PARAM_BLD* builder) {
  Params params(OSSL_PARAM_BLD_to_param(builder));
  Ssl(params != nullptr, "OSSL_PARAM_BLD_to_param");
  PkeyCtx ctx(EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr));
  EVP_PKEY* raw = nullptr;
  Ssl(ctx && EVP_PKEY_fromdata_init(ctx.get()) == 1 &&
          EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_PUBLIC_KEY, params.get()) == 1,
      "EVP_PKEY_fromdata");
  return Pkey(raw);
}

bool DigestVerify(EVP_PKEY* key, const Bytes& data, const Bytes& der_or_raw_signature) {
  MdCtx ctx(EVP_MD_CTX_new());
  Ssl(ctx && EVP_DigestVerifyInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key) == 1,
      "EVP_DigestVerifyInit");
  return EVP_DigestVerify(ctx.get(), der_or_raw_signature.data(), der_or_raw_signature.size(),
                          data.data(), data.size()) == 1;
}

// ECDSA r||s (PKCS#11's form) to the DER form OpenSSL verifies.
Bytes EcdsaDer(const Bytes& raw) {
  if (raw.empty() || raw.size() % 2 != 0) return {};
  const int half = static_cast<int>(raw.size() / 2);
  EcdsaSig sig(ECDSA_SIG_new());
  BIGNUM* r = BN_bin2bn(raw.data(), half, nullptr);
  BIGNUM* s = BN_bin2bn(raw.data() + half, half, nullptr);
  Ssl(sig && r && s && ECDSA_SIG_set0(sig.get(), r, s) == 1, "ECDSA_SIG_set0");
  const int size = i2d_ECDSA_SIG(sig.get(), nullptr);
  Bytes der(static_cast<std::size_t>(size));
  unsigned char* out = der.data();
  i2d_ECDSA_SIG(sig.get(), &out);
  return der;
}

}  // namespace

CallFailed::CallFailed(const std::string& what, CK_RV rv)
    : std::runtime_error(what + " -> " + RvName(rv)), rv_(rv) {}

std::string RvName(CK_RV rv) {
  struct Name {
    CK_RV rv;
    const char* name;
  };
  static const Name names[] = {
      {CKR_OK, "CKR_OK"}, {CKR_GENERAL_ERROR, "CKR_GENERAL_ERROR"},
      {CKR_FUNCTION_FAILED, "CKR_FUNCTION_FAILED"}, {CKR_ARGUMENTS_BAD, "CKR_ARGUMENTS_BAD"},
      {CKR_ATTRIBUTE_READ_ONLY, "CKR_ATTRIBUTE_READ_ONLY"},
      {CKR_ATTRIBUTE_TYPE_INVALID, "CKR_ATTRIBUTE_TYPE_INVALID"},
      {CKR_ATTRIBUTE_VALUE_INVALID, "CKR_ATTRIBUTE_VALUE_INVALID"},
      {CKR_ACTION_PROHIBITED, "CKR_ACTION_PROHIBITED"}, {CKR_DEVICE_ERROR, "CKR_DEVICE_ERROR"},
      {CKR_DEVICE_REMOVED, "CKR_DEVICE_REMOVED"}, {CKR_KEY_HANDLE_INVALID, "CKR_KEY_HANDLE_INVALID"},
      {CKR_KEY_NOT_WRAPPABLE, "CKR_KEY_NOT_WRAPPABLE"}, {CKR_KEY_UNEXTRACTABLE, "CKR_KEY_UNEXTRACTABLE"},
      {CKR_KEY_FUNCTION_NOT_PERMITTED, "CKR_KEY_FUNCTION_NOT_PERMITTED"},
      {CKR_KEY_TYPE_INCONSISTENT, "CKR_KEY_TYPE_INCONSISTENT"},
      {CKR_MECHANISM_INVALID, "CKR_MECHANISM_INVALID"},
      {CKR_MECHANISM_PARAM_INVALID, "CKR_MECHANISM_PARAM_INVALID"},
      {CKR_OBJECT_HANDLE_INVALID, "CKR_OBJECT_HANDLE_INVALID"},
      {CKR_OPERATION_ACTIVE, "CKR_OPERATION_ACTIVE"}, {CKR_PIN_INCORRECT, "CKR_PIN_INCORRECT"},
      {CKR_SESSION_HANDLE_INVALID, "CKR_SESSION_HANDLE_INVALID"},
      {CKR_SIGNATURE_INVALID, "CKR_SIGNATURE_INVALID"}, {CKR_TEMPLATE_INCOMPLETE, "CKR_TEMPLATE_INCOMPLETE"},
      {CKR_TEMPLATE_INCONSISTENT, "CKR_TEMPLATE_INCONSISTENT"},
      {CKR_TOKEN_NOT_PRESENT, "CKR_TOKEN_NOT_PRESENT"}, {CKR_USER_NOT_LOGGED_IN, "CKR_USER_NOT_LOGGED_IN"},
      {CKR_WRAPPED_KEY_INVALID, "CKR_WRAPPED_KEY_INVALID"}, {CKR_BUFFER_TOO_SMALL, "CKR_BUFFER_TOO_SMALL"},
      {CKR_CRYPTOKI_NOT_INITIALIZED, "CKR_CRYPTOKI_NOT_INITIALIZED"},
      {CKR_FUNCTION_NOT_SUPPORTED, "CKR_FUNCTION_NOT_SUPPORTED"},
  };
  for (const Name& n : names)
    if (n.rv == rv) return n.name;
  char hex[32];
  std::snprintf(hex, sizeof hex, "0x%08lx", rv);
  return hex;
}

void Check(CK_RV rv, const std::string& what) {
  if (rv != CKR_OK) throw CallFailed(what, rv);
}

void LoadModule(const std::string& path) {
  void* module = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (module == nullptr) throw std::runtime_error(std::string("dlopen: ") + dlerror());
  auto get = reinterpret_cast<CK_C_GetFunctionList>(dlsym(module, "C_GetFunctionList"));
  if (get == nullptr) throw std::runtime_error(path + " has no C_GetFunctionList");
  Check(get(&p11), "C_GetFunctionList");
  CK_C_INITIALIZE_ARGS init{};
  init.flags = CKF_OS_LOCKING_OK;
  Check(p11->C_Initialize(&init), "C_Initialize");
}

void UnloadModule() {
  if (p11 != nullptr) p11->C_Finalize(nullptr);
  p11 = nullptr;
}

CK_SESSION_HANDLE OpenToken(const std::string& token, const std::string& pin) {
  CK_ULONG count = 0;
  Check(p11->C_GetSlotList(CK_TRUE, nullptr, &count), "C_GetSlotList");
  std::vector<CK_SLOT_ID> slots(count);
  Check(p11->C_GetSlotList(CK_TRUE, slots.data(), &count), "C_GetSlotList");
  slots.resize(count);
  std::string seen;
  for (CK_SLOT_ID slot : slots) {
    CK_TOKEN_INFO info{};
    if (p11->C_GetTokenInfo(slot, &info) != CKR_OK) continue;
    std::string name(reinterpret_cast<char*>(info.label), sizeof info.label);
    name.erase(name.find_last_not_of(' ') + 1);
    seen += " '" + name + "'";
    if (name != token) continue;
    CK_SESSION_HANDLE session = 0;
    Check(p11->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &session),
          "C_OpenSession");
    const CK_RV rv = p11->C_Login(session, CKU_USER,
                                  reinterpret_cast<CK_UTF8CHAR_PTR>(const_cast<char*>(pin.data())),
                                  pin.size());
    if (rv != CKR_USER_ALREADY_LOGGED_IN) Check(rv, "C_Login");
    return session;
  }
  throw std::runtime_error("no token labelled '" + token + "' (tokens:" + seen + ")");
}

std::vector<CK_OBJECT_HANDLE> Find(CK_SESSION_HANDLE session, std::vector<CK_ATTRIBUTE> match,
                                   CK_ULONG chunk) {
  Check(p11->C_FindObjectsInit(session, match.data(), match.size()), "C_FindObjectsInit");
  std::vector<CK_OBJECT_HANDLE> found;
  for (;;) {
    std::vector<CK_OBJECT_HANDLE> batch(chunk);
    CK_ULONG n = 0;
    const CK_RV rv = p11->C_FindObjects(session, batch.data(), chunk, &n);
    if (rv != CKR_OK) {
      p11->C_FindObjectsFinal(session);
      Check(rv, "C_FindObjects");
    }
    found.insert(found.end(), batch.begin(), batch.begin() + static_cast<long>(n));
    if (n < chunk) break;
  }
  Check(p11->C_FindObjectsFinal(session), "C_FindObjectsFinal");
  return found;
}

std::vector<CK_OBJECT_HANDLE> FindLabel(CK_SESSION_HANDLE session, const std::string& label,
                                        std::optional<CK_OBJECT_CLASS> object_class) {
  std::string copy = label;
  CK_OBJECT_CLASS value = object_class.value_or(0);
  std::vector<CK_ATTRIBUTE> match = {{CKA_LABEL, copy.data(), copy.size()}};
  if (object_class) match.push_back({CKA_CLASS, &value, sizeof value});
  return Find(session, match);
}

std::optional<Bytes> Attribute(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object,
                               CK_ATTRIBUTE_TYPE type) {
  CK_ATTRIBUTE attribute{type, nullptr, 0};
  if (p11->C_GetAttributeValue(session, object, &attribute, 1) != CKR_OK) return std::nullopt;
  if (attribute.ulValueLen == CK_UNAVAILABLE_INFORMATION) return std::nullopt;
  Bytes value(attribute.ulValueLen);
  attribute.pValue = value.data();
  if (p11->C_GetAttributeValue(session, object, &attribute, 1) != CKR_OK) return std::nullopt;
  value.resize(attribute.ulValueLen);
  return value;
}

std::optional<bool> Flag(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object, CK_ATTRIBUTE_TYPE type) {
  const std::optional<Bytes> value = Attribute(session, object, type);
  if (!value || value->size() != 1) return std::nullopt;
  return (*value)[0] != 0;
}

std::optional<CK_ULONG> Ulong(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object,
                              CK_ATTRIBUTE_TYPE type) {
  CK_ULONG value = 0;
  CK_ATTRIBUTE attribute{type, &value, sizeof value};
  if (p11->C_GetAttributeValue(session, object, &attribute, 1) != CKR_OK) return std::nullopt;
  return value;
}

std::string Text(const std::optional<Bytes>& bytes) {
  return bytes ? std::string(bytes->begin(), bytes->end()) : std::string();
}

const char* ClassName(CK_OBJECT_CLASS object_class) {
  switch (object_class) {
    case CKO_PRIVATE_KEY: return "priv";
    case CKO_PUBLIC_KEY: return "pub";
    case CKO_SECRET_KEY: return "secret";
    case CKO_CERTIFICATE: return "cert";
    case CKO_DATA: return "data";
    default: return "other";
  }
}

Template& Template::Add(CK_ATTRIBUTE_TYPE type, const Bytes& value) {
  storage.push_back(value);
  attributes.push_back({type, nullptr, value.size()});
  return *this;
}

CK_ATTRIBUTE* Template::data() {
  for (std::size_t i = 0; i < attributes.size(); ++i) attributes[i].pValue = storage[i].data();
  return attributes.data();
}

Template& Template::Add(CK_ATTRIBUTE_TYPE type, const std::string& value) {
  return Add(type, Bytes(value.begin(), value.end()));
}

Template& Template::Bool(CK_ATTRIBUTE_TYPE type, bool value) {
  return Add(type, Bytes{static_cast<unsigned char>(value ? CK_TRUE : CK_FALSE)});
}

Template& Template::Ulong(CK_ATTRIBUTE_TYPE type, CK_ULONG value) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(&value);
  return Add(type, Bytes(bytes, bytes + sizeof value));
}

Bytes Sign(CK_SESSION_HANDLE session, CK_MECHANISM_TYPE mechanism, CK_OBJECT_HANDLE key,
           const Bytes& data) {
  CK_MECHANISM m{mechanism, nullptr, 0};
  Check(p11->C_SignInit(session, &m, key), "C_SignInit");
  Bytes signature(1024);
  CK_ULONG size = signature.size();
  Check(p11->C_Sign(session, const_cast<unsigned char*>(data.data()), data.size(), signature.data(),
                    &size),
        "C_Sign");
  signature.resize(size);
  return signature;
}

Bytes Encrypt(CK_SESSION_HANDLE session, CK_MECHANISM mechanism, CK_OBJECT_HANDLE key,
              const Bytes& data) {
  Check(p11->C_EncryptInit(session, &mechanism, key), "C_EncryptInit");
  Bytes out(data.size() + 64);
  CK_ULONG size = out.size();
  Check(p11->C_Encrypt(session, const_cast<unsigned char*>(data.data()), data.size(), out.data(), &size),
        "C_Encrypt");
  out.resize(size);
  return out;
}

Bytes Decrypt(CK_SESSION_HANDLE session, CK_MECHANISM mechanism, CK_OBJECT_HANDLE key,
              const Bytes& data) {
  Check(p11->C_DecryptInit(session, &mechanism, key), "C_DecryptInit");
  Bytes out(data.size() + 64);
  CK_ULONG size = out.size();
  Check(p11->C_Decrypt(session, const_cast<unsigned char*>(data.data()), data.size(), out.data(), &size),
        "C_Decrypt");
  out.resize(size);
  return out;
}

std::string Hex(const Bytes& bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

Bytes Sha256(const Bytes& data) {
  Bytes digest(32);
  unsigned int size = 0;
  Ssl(EVP_Digest(data.data(), data.size(), digest.data(), &size, EVP_sha256(), nullptr) == 1,
      "EVP_Digest");
  return digest;
}

Bytes Sha256(const std::string& text) { return Sha256(Bytes(text.begin(), text.end())); }

Bytes RandomBytes(std::size_t count) {
  Bytes out(count);
  Ssl(RAND_bytes(out.data(), static_cast<int>(count)) == 1, "RAND_bytes");
  return out;
}

Bytes AesEcb(const Bytes& key, const Bytes& data) {
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  Bytes out(data.size() + 16);
  int size = 0, tail = 0;
  Ssl(ctx && EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_ecb(), nullptr, key.data(), nullptr) == 1 &&
          EVP_CIPHER_CTX_set_padding(ctx.get(), 0) == 1 &&
          EVP_EncryptUpdate(ctx.get(), out.data(), &size, data.data(), static_cast<int>(data.size())) == 1 &&
          EVP_EncryptFinal_ex(ctx.get(), out.data() + size, &tail) == 1,
      "AES-256-ECB");
  out.resize(static_cast<std::size_t>(size + tail));
  return out;
}

Bytes AesKeyWrap(const Bytes& kek, const Bytes& key) {
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  Bytes out(key.size() + 16);
  int size = 0, tail = 0;
  Ssl(ctx && EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_wrap(), nullptr, kek.data(), nullptr) == 1 &&
          EVP_EncryptUpdate(ctx.get(), out.data(), &size, key.data(), static_cast<int>(key.size())) == 1 &&
          EVP_EncryptFinal_ex(ctx.get(), out.data() + size, &tail) == 1,
      "AES-256 key wrap");
  out.resize(static_cast<std::size_t>(size + tail));
  return out;
}

Bytes HmacSha256(const Bytes& key, const Bytes& data) {
  Bytes out(32);
  unsigned int size = 0;
  Ssl(HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), data.data(), data.size(), out.data(),
           &size) != nullptr,
      "HMAC");
  out.resize(size);
  return out;
}

Bytes BarePoint(const Bytes& ec_point) {
  // 04 len <point> or 04 81 len <point>; a bare point also starts with 04, so check lengths.
  if (ec_point.size() > 2 && ec_point[0] == 0x04 && ec_point[1] == ec_point.size() - 2)
    return Bytes(ec_point.begin() + 2, ec_point.end());
  if (ec_point.size() > 3 && ec_point[0] == 0x04 && ec_point[1] == 0x81 && ec_point[2] == ec_point.size() - 3)
    return Bytes(ec_point.begin() + 3, ec_point.end());
  return ec_point;
}

bool VerifyRsaSha256(const Bytes& modulus, const Bytes& exponent, const Bytes& data,
                     const Bytes& signature) {
  Bignum n(BN_bin2bn(modulus.data(), static_cast<int>(modulus.size()), nullptr));
  Bignum e(BN_bin2bn(exponent.data(), static_cast<int>(exponent.size()), nullptr));
  ParamBld builder(OSSL_PARAM_BLD_new());
  Ssl(n && e && builder && OSSL_PARAM_BLD_push_BN(builder.get(), OSSL_PKEY_PARAM_RSA_N, n.get()) == 1 &&
          OSSL_PARAM_BLD_push_BN(builder.get(), OSSL_PKEY_PARAM_RSA_E, e.get()) == 1,
      "RSA parameters");
  Pkey key = PkeyFromData("RSA", builder.get());
  return DigestVerify(key.get(), data, signature);
}

struct EcdsaVerifier::Impl {
  Pkey key;
  PkeyCtx ctx;
};

EcdsaVerifier::EcdsaVerifier(const std::string& curve, const Bytes& point) : impl_(std::make_unique<Impl>()) {
  ParamBld builder(OSSL_PARAM_BLD_new());
  Ssl(builder &&
          OSSL_PARAM_BLD_push_utf8_string(builder.get(), OSSL_PKEY_PARAM_GROUP_NAME, curve.c_str(), 0) == 1 &&
          OSSL_PARAM_BLD_push_octet_string(builder.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(), point.size()) == 1,
      "EC parameters");
  impl_->key = PkeyFromData("EC", builder.get());
  impl_->ctx.reset(EVP_PKEY_CTX_new(impl_->key.get(), nullptr));
  Ssl(impl_->ctx && EVP_PKEY_verify_init(impl_->ctx.get()) == 1, "EVP_PKEY_verify_init");
}

EcdsaVerifier::~EcdsaVerifier() = default;

bool EcdsaVerifier::Verify(const Bytes& digest, const Bytes& raw_signature) const {
  const Bytes der = EcdsaDer(raw_signature);
  return !der.empty() &&
         EVP_PKEY_verify(impl_->ctx.get(), der.data(), der.size(), digest.data(), digest.size()) == 1;
}

EVP_PKEY* EcdsaVerifier::key() const { return impl_->key.get(); }

bool VerifyEcdsa(const std::string& curve, const Bytes& point, const Bytes& digest,
                 const Bytes& signature) {
  return EcdsaVerifier(curve, point).Verify(digest, signature);
}

std::string ReadPinFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read PIN file " + path);
  std::string pin;
  std::getline(in, pin);
  return pin;
}

bool VerifyWithPem(const std::string& pem_path, const Bytes& data, const Bytes& signature) {
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(pem_path.c_str(), "r"), &std::fclose);
  if (!file) throw std::runtime_error("cannot open " + pem_path);
  Pkey key(PEM_read_PUBKEY(file.get(), nullptr, nullptr, nullptr));
  Ssl(key != nullptr, "PEM_read_PUBKEY");
  if (EVP_PKEY_get_base_id(key.get()) == EVP_PKEY_EC) {
    const Bytes der = EcdsaDer(signature);
    return !der.empty() && DigestVerify(key.get(), data, der);
  }
  return DigestVerify(key.get(), data, signature);
}

Bytes SelfSignedCertificate(const std::string& common_name, Bytes* subject) {
  Pkey key(EVP_EC_gen("prime256v1"));
  X509Ptr cert(X509_new());
  Ssl(key && cert, "EVP_EC_gen / X509_new");
  X509_NAME* name = X509_get_subject_name(cert.get());
  Ssl(X509_set_version(cert.get(), 2) == 1 &&
          ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 1) == 1 &&
          X509_gmtime_adj(X509_getm_notBefore(cert.get()), 0) != nullptr &&
          X509_gmtime_adj(X509_getm_notAfter(cert.get()), 86400L * 30) != nullptr &&
          X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                                     reinterpret_cast<const unsigned char*>(common_name.c_str()), -1, -1,
                                     0) == 1 &&
          X509_set_issuer_name(cert.get(), name) == 1 && X509_set_pubkey(cert.get(), key.get()) == 1 &&
          X509_sign(cert.get(), key.get(), EVP_sha256()) > 0,
      "self-signed certificate");
  const int name_size = i2d_X509_NAME(name, nullptr);
  subject->resize(static_cast<std::size_t>(name_size));
  unsigned char* out = subject->data();
  i2d_X509_NAME(name, &out);
  const int size = i2d_X509(cert.get(), nullptr);
  Bytes der(static_cast<std::size_t>(size));
  out = der.data();
  i2d_X509(cert.get(), &out);
  return der;
}

}  // namespace replication_probe
