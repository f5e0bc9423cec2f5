// SPDX-License-Identifier: Apache-2.0
// PKCS#11 and OpenSSL helpers for replication_probe. The probe dlopens whatever module it is
// given (libp11ha.so, or SoftHSM to look at one member token directly) and links no p11ha code,
// so that what it checks is the tokens' state, not p11ha's view of it.
#pragma once

#include <openssl/types.h>
#include <p11-kit/pkcs11.h>

#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace replication_probe {

using Bytes = std::vector<unsigned char>;

// A PKCS#11 call that failed; `rv` lets a subcommand report the exact code the test expects.
class CallFailed : public std::runtime_error {
 public:
  CallFailed(const std::string& what, CK_RV rv);
  CK_RV rv() const { return rv_; }

 private:
  CK_RV rv_;
};

extern CK_FUNCTION_LIST* p11;
extern CK_BBOOL kTrue, kFalse;

std::string RvName(CK_RV rv);
void Check(CK_RV rv, const std::string& what);

void LoadModule(const std::string& path);  // dlopen + C_Initialize(CKF_OS_LOCKING_OK)
void UnloadModule();                       // C_Finalize
// An R/W session on the token labelled `token`, logged in as the user.
CK_SESSION_HANDLE OpenToken(const std::string& token, const std::string& pin);

// Every match, fetched `chunk` handles per C_FindObjects call.
std::vector<CK_OBJECT_HANDLE> Find(CK_SESSION_HANDLE session, std::vector<CK_ATTRIBUTE> match,
                                   CK_ULONG chunk = 64);
std::vector<CK_OBJECT_HANDLE> FindLabel(CK_SESSION_HANDLE session, const std::string& label,
                                        std::optional<CK_OBJECT_CLASS> object_class = {});
// The attribute's value; nullopt when the token will not give it (sensitive, absent...).
std::optional<Bytes> Attribute(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object,
                               CK_ATTRIBUTE_TYPE type);
std::optional<bool> Flag(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object, CK_ATTRIBUTE_TYPE type);
std::optional<CK_ULONG> Ulong(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object,
                              CK_ATTRIBUTE_TYPE type);
std::string Text(const std::optional<Bytes>& bytes);
const char* ClassName(CK_OBJECT_CLASS object_class);  // priv, pub, secret, cert, data, other

// Template building: the attribute points into `storage`, which must outlive the call.
struct Template {
  std::vector<CK_ATTRIBUTE> attributes;
  std::vector<Bytes> storage;
  Template& Add(CK_ATTRIBUTE_TYPE type, const Bytes& value);
  Template& Add(CK_ATTRIBUTE_TYPE type, const std::string& value);
  Template& Bool(CK_ATTRIBUTE_TYPE type, bool value);
  Template& Ulong(CK_ATTRIBUTE_TYPE type, CK_ULONG value);
  CK_ATTRIBUTE* data();  // refreshes every pointer, so a copied Template stays valid
  CK_ULONG size() const { return static_cast<CK_ULONG>(attributes.size()); }
};

// Single-part operations on one session.
Bytes Sign(CK_SESSION_HANDLE session, CK_MECHANISM_TYPE mechanism, CK_OBJECT_HANDLE key,
           const Bytes& data);
Bytes Encrypt(CK_SESSION_HANDLE session, CK_MECHANISM mechanism, CK_OBJECT_HANDLE key,
              const Bytes& data);
Bytes Decrypt(CK_SESSION_HANDLE session, CK_MECHANISM mechanism, CK_OBJECT_HANDLE key,
              const Bytes& data);

// OpenSSL side: never the token, so a token that lies cannot vouch for itself.
std::string Hex(const Bytes& bytes);
Bytes Sha256(const Bytes& data);
Bytes Sha256(const std::string& text);
Bytes RandomBytes(std::size_t count);
Bytes AesEcb(const Bytes& key, const Bytes& data);      // no padding; data a multiple of 16
Bytes AesKeyWrap(const Bytes& kek, const Bytes& key);   // RFC 3394
Bytes HmacSha256(const Bytes& key, const Bytes& data);
// The bare point (04||X||Y) from CKA_EC_POINT, which SoftHSM gives as a DER OCTET STRING.
Bytes BarePoint(const Bytes& ec_point);
bool VerifyRsaSha256(const Bytes& modulus, const Bytes& exponent, const Bytes& data,
                     const Bytes& signature);
// `curve` is an OpenSSL group name ("prime256v1", "secp384r1"); `signature` is raw r||s.
bool VerifyEcdsa(const std::string& curve, const Bytes& point, const Bytes& digest,
                 const Bytes& signature);
// Verifies with a PEM public key file: RSA PKCS#1 v1.5 SHA-256 over `data`, or ECDSA (raw
// r||s) over SHA-256(data).
// An ECDSA public key built once from a bare point (BarePoint of CKA_EC_POINT), for clients that check many signatures
// (building the key per signature would take longer than a load run). One per thread:
// OpenSSL's verify context is not shared.
class EcdsaVerifier {
 public:
  EcdsaVerifier(const std::string& curve, const Bytes& point);
  ~EcdsaVerifier();
  EcdsaVerifier(const EcdsaVerifier&) = delete;
  EcdsaVerifier& operator=(const EcdsaVerifier&) = delete;
  bool Verify(const Bytes& digest, const Bytes& raw_signature) const;  // PKCS#11's raw r||s
  EVP_PKEY* key() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The first line of a PIN file.
std::string ReadPinFile(const std::string& path);

bool VerifyWithPem(const std::string& pem_path, const Bytes& data, const Bytes& signature);
// A self-signed EC certificate (DER) for subject CN=`common_name`; `subject` gets the DER name.
Bytes SelfSignedCertificate(const std::string& common_name, Bytes* subject);

}  // namespace replication_probe
