// SPDX-License-Identifier: Apache-2.0
#include "replication/attributes.h"

#include <algorithm>
#include <optional>

namespace p11ha::replication {
namespace {

bool Tolerated(CK_RV rv) { return rv == CKR_OK || rv == CKR_ATTRIBUTE_TYPE_INVALID || rv == CKR_ATTRIBUTE_SENSITIVE; }

// Attributes whose values are a CK_BBOOL, a CK_ULONG or a CK_DATE: never longer than a read's
// guess, so when unavailable they are absent, and need no size query to tell.
bool FixedSize(CK_ATTRIBUTE_TYPE type) {
  switch (type) {
    case CKA_CLASS: case CKA_KEY_TYPE: case CKA_CERTIFICATE_TYPE: case CKA_CERTIFICATE_CATEGORY:
    case CKA_TOKEN: case CKA_PRIVATE: case CKA_MODIFIABLE: case CKA_COPYABLE: case CKA_DESTROYABLE:
    case CKA_SENSITIVE: case CKA_EXTRACTABLE: case CKA_ALWAYS_SENSITIVE: case CKA_NEVER_EXTRACTABLE:
    case CKA_ENCRYPT: case CKA_DECRYPT: case CKA_WRAP: case CKA_UNWRAP: case CKA_SIGN: case CKA_SIGN_RECOVER:
    case CKA_VERIFY: case CKA_VERIFY_RECOVER: case CKA_DERIVE: case CKA_LOCAL: case CKA_TRUSTED:
    case CKA_WRAP_WITH_TRUSTED: case CKA_ALWAYS_AUTHENTICATE: case CKA_KEY_GEN_MECHANISM: case CKA_VALUE_LEN:
    case CKA_MODULUS_BITS: case CKA_START_DATE: case CKA_END_DATE:
      return true;
    default:
      return false;
  }
}

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
                     AttributeList& out, std::span<const CK_ATTRIBUTE_TYPE> short_only) {
  out.clear();
  // Nearly every value fits in this much: one read then answers, without a size query first.
  // Member calls are what a listing of thousands of objects spends its time on.
  constexpr CK_ULONG kGuess = 256;
  std::vector<CK_BYTE> scratch(types.size() * kGuess);
  std::vector<CK_ATTRIBUTE> query;
  query.reserve(types.size());
  for (std::size_t i = 0; i < types.size(); ++i) query.push_back({types[i], scratch.data() + i * kGuess, kGuess});
  CK_RV rv = token.GetAttributeValue(object, query);
  if (!Tolerated(rv) && rv != CKR_BUFFER_TOO_SMALL) return rv;
  std::vector<std::optional<Attribute>> read(types.size());
  std::vector<std::size_t> unsure;
  for (std::size_t i = 0; i < types.size(); ++i) {
    if (query[i].ulValueLen != CK_UNAVAILABLE_INFORMATION) {
      const CK_BYTE* bytes = scratch.data() + i * kGuess;
      read[i] = Attribute{types[i], std::vector<CK_BYTE>(bytes, bytes + query[i].ulValueLen)};
    } else if (rv != CKR_OK && !FixedSize(types[i]) &&
               std::find(short_only.begin(), short_only.end(), types[i]) == short_only.end()) {
      unsure.push_back(i);
    }
  }
  if (!unsure.empty()) {
    // Unavailable means absent, sensitive or longer than the guess, and one CK_RV cannot say
    // which for each (SoftHSM reports CKR_ATTRIBUTE_TYPE_INVALID over CKR_BUFFER_TOO_SMALL):
    // a size query tells the long ones, which are then read at their size. A scalar is never
    // too long, so only variable-length attributes are asked again.
    query.clear();
    for (std::size_t i : unsure) query.push_back({types[i], nullptr, 0});
    rv = token.GetAttributeValue(object, query);
    if (!Tolerated(rv)) return rv;
    std::vector<std::size_t> long_ones;
    std::vector<CK_ATTRIBUTE> long_query;
    for (std::size_t k = 0; k < unsure.size(); ++k) {
      if (query[k].ulValueLen == CK_UNAVAILABLE_INFORMATION) continue;
      read[unsure[k]] = Attribute{types[unsure[k]], std::vector<CK_BYTE>(query[k].ulValueLen)};
      long_ones.push_back(unsure[k]);
    }
    for (std::size_t i : long_ones)
      long_query.push_back({types[i], read[i]->value.empty() ? nullptr : read[i]->value.data(),
                            CK_ULONG{read[i]->value.size()}});
    if (!long_query.empty()) {
      rv = token.GetAttributeValue(object, long_query);
      if (!Tolerated(rv)) return rv;
      for (std::size_t k = 0; k < long_ones.size(); ++k) {
        std::optional<Attribute>& attribute = read[long_ones[k]];
        // A size query may overstate; the read gives the true length.
        if (long_query[k].ulValueLen == CK_UNAVAILABLE_INFORMATION) attribute.reset();
        else attribute->value.resize(long_query[k].ulValueLen);
      }
    }
  }
  for (std::optional<Attribute>& attribute : read)
    if (attribute) out.push_back(std::move(*attribute));
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
