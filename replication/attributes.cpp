// SPDX-License-Identifier: Apache-2.0
#include "replication/attributes.h"

#include <algorithm>

namespace p11ha::replication {
namespace {

bool Tolerated(CK_RV rv) { return rv == CKR_OK || rv == CKR_ATTRIBUTE_TYPE_INVALID || rv == CKR_ATTRIBUTE_SENSITIVE; }

constexpr CK_ATTRIBUTE_TYPE kKey[] = {
    CKA_CLASS,    CKA_KEY_TYPE,    CKA_TOKEN,       CKA_PRIVATE,     CKA_LABEL,        CKA_ID,
    CKA_SUBJECT,  CKA_SENSITIVE,   CKA_EXTRACTABLE, CKA_ENCRYPT,     CKA_DECRYPT,      CKA_WRAP,
    CKA_UNWRAP,   CKA_SIGN,        CKA_SIGN_RECOVER, CKA_VERIFY,     CKA_DERIVE,       CKA_START_DATE,
    CKA_END_DATE, CKA_MODIFIABLE,  CKA_COPYABLE,    CKA_DESTROYABLE, CKA_ALWAYS_AUTHENTICATE,
    CKA_WRAP_WITH_TRUSTED, CKA_ALLOWED_MECHANISMS};
constexpr CK_ATTRIBUTE_TYPE kPublicKey[] = {
    CKA_CLASS,      CKA_KEY_TYPE,   CKA_TOKEN,     CKA_PRIVATE,   CKA_LABEL,          CKA_ID,
    CKA_SUBJECT,    CKA_START_DATE, CKA_END_DATE,  CKA_DERIVE,    CKA_ENCRYPT,        CKA_VERIFY,
    CKA_VERIFY_RECOVER, CKA_WRAP,   CKA_MODIFIABLE, CKA_COPYABLE, CKA_DESTROYABLE,    CKA_ALLOWED_MECHANISMS,
    CKA_MODULUS,    CKA_PUBLIC_EXPONENT, CKA_EC_PARAMS, CKA_EC_POINT};
constexpr CK_ATTRIBUTE_TYPE kCertificate[] = {
    CKA_CLASS,   CKA_TOKEN,  CKA_PRIVATE,       CKA_LABEL,      CKA_MODIFIABLE, CKA_COPYABLE, CKA_DESTROYABLE,
    CKA_CERTIFICATE_TYPE, CKA_CERTIFICATE_CATEGORY, CKA_ID, CKA_SUBJECT, CKA_ISSUER, CKA_SERIAL_NUMBER,
    CKA_VALUE,   CKA_URL,    CKA_START_DATE,    CKA_END_DATE};
constexpr CK_ATTRIBUTE_TYPE kData[] = {CKA_CLASS,    CKA_TOKEN,    CKA_PRIVATE,    CKA_LABEL, CKA_MODIFIABLE,
                                       CKA_COPYABLE, CKA_DESTROYABLE, CKA_APPLICATION, CKA_OBJECT_ID, CKA_VALUE};
constexpr CK_ATTRIBUTE_TYPE kOther[] = {CKA_CLASS, CKA_TOKEN, CKA_PRIVATE, CKA_LABEL};

}  // namespace

CK_RV ReadAttributes(TokenSession& token, CK_OBJECT_HANDLE object, std::span<const CK_ATTRIBUTE_TYPE> types,
                     AttributeList& out) {
  out.clear();
  std::vector<CK_ATTRIBUTE> query;
  for (CK_ATTRIBUTE_TYPE type : types) query.push_back({type, nullptr, 0});
  CK_RV rv = token.GetAttributeValue(object, query);
  if (!Tolerated(rv)) return rv;
  AttributeList list;
  for (const CK_ATTRIBUTE& attribute : query)
    if (attribute.ulValueLen != CK_UNAVAILABLE_INFORMATION) list.push_back({attribute.type, {}});
  if (list.empty()) return CKR_OK;
  query.clear();
  for (Attribute& attribute : list) {
    // A size query may overstate; the read below gives the true length.
    attribute.value.resize(0);
    query.push_back({attribute.type, nullptr, 0});
  }
  rv = token.GetAttributeValue(object, query);
  if (!Tolerated(rv)) return rv;
  for (std::size_t i = 0; i < list.size(); ++i) {
    if (query[i].ulValueLen == CK_UNAVAILABLE_INFORMATION) continue;
    list[i].value.resize(query[i].ulValueLen);
    query[i].pValue = list[i].value.empty() ? nullptr : list[i].value.data();
  }
  rv = token.GetAttributeValue(object, query);
  if (!Tolerated(rv)) return rv;
  for (std::size_t i = 0; i < list.size(); ++i) {
    if (query[i].ulValueLen == CK_UNAVAILABLE_INFORMATION) continue;
    list[i].value.resize(query[i].ulValueLen);
    out.push_back(std::move(list[i]));
  }
  return CKR_OK;
}

std::vector<CK_ATTRIBUTE> AsTemplate(AttributeList& list) {
  std::vector<CK_ATTRIBUTE> attributes;
  attributes.reserve(list.size());
  for (Attribute& attribute : list)
    attributes.push_back({attribute.type, attribute.value.empty() ? nullptr : attribute.value.data(),
                          CK_ULONG{attribute.value.size()}});
  return attributes;
}

const Attribute* FindAttribute(const AttributeList& list, CK_ATTRIBUTE_TYPE type) {
  auto it = std::find_if(list.begin(), list.end(), [type](const Attribute& a) { return a.type == type; });
  return it == list.end() ? nullptr : &*it;
}

std::span<const CK_ATTRIBUTE_TYPE> CopiedAttributes(CK_OBJECT_CLASS object_class) {
  switch (object_class) {
    case CKO_PRIVATE_KEY:
    case CKO_SECRET_KEY:
      return kKey;
    case CKO_PUBLIC_KEY:
      return kPublicKey;
    case CKO_CERTIFICATE:
      return kCertificate;
    case CKO_DATA:
      return kData;
    default:
      return kOther;
  }
}

bool DropFromTemplate(const Attribute& attribute) {
  // SoftHSM refuses an empty CKA_ALLOWED_MECHANISMS (research §1).
  return attribute.type == CKA_ALLOWED_MECHANISMS && attribute.value.empty();
}

}  // namespace p11ha::replication
