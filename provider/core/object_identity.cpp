// SPDX-License-Identifier: Apache-2.0
#include "provider/core/object_identity.h"

#include <openssl/evp.h>

#include <array>
#include <vector>

namespace p11ha {
namespace {

// Attributes whose bytes may enter an identity, by object class.
std::vector<CK_ATTRIBUTE_TYPE> MaterialFor(CK_OBJECT_CLASS object_class, CK_KEY_TYPE key_type) {
  switch (object_class) {
    case CKO_PUBLIC_KEY:
      if (key_type == CKK_RSA) return {CKA_MODULUS, CKA_PUBLIC_EXPONENT};
      if (key_type == CKK_EC || key_type == CKK_EC_EDWARDS) return {CKA_EC_PARAMS, CKA_EC_POINT};
      return {CKA_ID, CKA_LABEL};
    case CKO_PRIVATE_KEY:
      if (key_type == CKK_RSA) return {CKA_MODULUS, CKA_PUBLIC_EXPONENT};
      return {CKA_EC_PARAMS, CKA_ID, CKA_LABEL};
    case CKO_SECRET_KEY:
      return {CKA_VALUE_LEN, CKA_ID, CKA_LABEL};
    case CKO_CERTIFICATE:
      return {CKA_CERTIFICATE_TYPE, CKA_VALUE};
    case CKO_DATA:
      return {CKA_APPLICATION, CKA_OBJECT_ID, CKA_LABEL, CKA_VALUE};
    default:
      return {CKA_ID, CKA_LABEL};
  }
}

class Digest {
 public:
  Digest() : ctx_(EVP_MD_CTX_new()) { EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr); }
  ~Digest() { EVP_MD_CTX_free(ctx_); }
  void Add(CK_ULONG tag, const void* data, std::size_t size) {
    std::uint64_t header[2] = {tag, size};
    EVP_DigestUpdate(ctx_, header, sizeof header);
    if (size > 0) EVP_DigestUpdate(ctx_, data, size);
  }
  std::string Finish() {
    std::array<unsigned char, EVP_MAX_MD_SIZE> out{};
    unsigned int len = 0;
    EVP_DigestFinal_ex(ctx_, out.data(), &len);
    return std::string(reinterpret_cast<const char*>(out.data()), len);
  }

 private:
  EVP_MD_CTX* ctx_;
};

}  // namespace

CK_RV ReadObjectFacts(Member& member, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object, ObjectFacts* facts) {
  CK_OBJECT_CLASS object_class = CKO_DATA;
  CK_KEY_TYPE key_type = CK_UNAVAILABLE_INFORMATION;
  CK_BBOOL token = CK_FALSE, is_private = CK_FALSE;
  CK_ATTRIBUTE fixed[] = {{CKA_CLASS, &object_class, sizeof object_class},
                          {CKA_KEY_TYPE, &key_type, sizeof key_type},
                          {CKA_TOKEN, &token, sizeof token},
                          {CKA_PRIVATE, &is_private, sizeof is_private}};
  CK_RV rv = member.Call("C_GetAttributeValue", CallKind::kParallel, &CK_FUNCTION_LIST::C_GetAttributeValue, session, object,
                         fixed, CK_ULONG{4});
  if (rv != CKR_OK && rv != CKR_ATTRIBUTE_TYPE_INVALID && rv != CKR_ATTRIBUTE_SENSITIVE) return rv;
  if (fixed[0].ulValueLen == CK_UNAVAILABLE_INFORMATION) return CKR_OBJECT_HANDLE_INVALID;
  if (fixed[1].ulValueLen == CK_UNAVAILABLE_INFORMATION) key_type = CK_UNAVAILABLE_INFORMATION;

  std::vector<CK_ATTRIBUTE_TYPE> types = MaterialFor(object_class, key_type);
  std::vector<CK_ATTRIBUTE> query;
  for (CK_ATTRIBUTE_TYPE type : types) query.push_back({type, nullptr, 0});
  rv = member.Call("C_GetAttributeValue", CallKind::kParallel, &CK_FUNCTION_LIST::C_GetAttributeValue, session, object,
                   query.data(), CK_ULONG{query.size()});
  if (rv != CKR_OK && rv != CKR_ATTRIBUTE_TYPE_INVALID && rv != CKR_ATTRIBUTE_SENSITIVE) return rv;
  std::vector<std::vector<unsigned char>> values(query.size());
  for (std::size_t i = 0; i < query.size(); ++i) {
    if (query[i].ulValueLen == CK_UNAVAILABLE_INFORMATION) {
      query[i].ulValueLen = 0;
      continue;
    }
    values[i].resize(query[i].ulValueLen);
    query[i].pValue = values[i].data();
  }
  rv = member.Call("C_GetAttributeValue", CallKind::kParallel, &CK_FUNCTION_LIST::C_GetAttributeValue, session, object,
                   query.data(), CK_ULONG{query.size()});
  if (rv != CKR_OK && rv != CKR_ATTRIBUTE_TYPE_INVALID && rv != CKR_ATTRIBUTE_SENSITIVE) return rv;

  Digest digest;
  digest.Add(CKA_CLASS, &object_class, sizeof object_class);
  digest.Add(CKA_KEY_TYPE, &key_type, sizeof key_type);
  digest.Add(CKA_TOKEN, &token, sizeof token);
  for (const CK_ATTRIBUTE& attr : query) {
    std::size_t size = attr.ulValueLen == CK_UNAVAILABLE_INFORMATION ? 0 : attr.ulValueLen;
    digest.Add(attr.type, attr.pValue, attr.pValue ? size : 0);
  }
  facts->identity = digest.Finish();
  facts->object_class = object_class;
  facts->token = token == CK_TRUE;
  facts->is_private = is_private == CK_TRUE;
  return CKR_OK;
}

}  // namespace p11ha
