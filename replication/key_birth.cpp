// SPDX-License-Identifier: Apache-2.0
#include "replication/key_birth.h"

#include <cstring>
#include <optional>

namespace p11ha::replication {
namespace {

// Templates point at these; the member only reads them.
CK_BBOOL kTrue = CK_TRUE;

std::optional<bool> BoolOf(std::span<const CK_ATTRIBUTE> attributes, CK_ATTRIBUTE_TYPE type) {
  std::optional<bool> value;
  for (const CK_ATTRIBUTE& attribute : attributes)
    if (attribute.type == type && attribute.pValue != nullptr && attribute.ulValueLen == sizeof(CK_BBOOL))
      value = *static_cast<const CK_BBOOL*>(attribute.pValue) == CK_TRUE;
  return value;
}

CK_ATTRIBUTE True(CK_ATTRIBUTE_TYPE type) { return {type, &kTrue, sizeof kTrue}; }

}  // namespace

bool TemplateSaysToken(std::span<const CK_ATTRIBUTE> requested, bool otherwise) {
  return BoolOf(requested, CKA_TOKEN).value_or(otherwise);
}

bool TemplateClass(std::span<const CK_ATTRIBUTE> requested, CK_OBJECT_CLASS& out) {
  for (const CK_ATTRIBUTE& attribute : requested)
    if (attribute.type == CKA_CLASS && attribute.pValue != nullptr && attribute.ulValueLen == sizeof(CK_OBJECT_CLASS)) {
      std::memcpy(&out, attribute.pValue, sizeof out);
      return true;
    }
  return false;
}

bool TemplateHas(std::span<const CK_ATTRIBUTE> requested, CK_ATTRIBUTE_TYPE type, const std::string& value) {
  for (const CK_ATTRIBUTE& attribute : requested)
    if (attribute.type == type && attribute.ulValueLen == value.size() &&
        (value.empty() || (attribute.pValue != nullptr && std::memcmp(attribute.pValue, value.data(), value.size()) == 0)))
      return true;
  return false;
}

Birth KeyBirth(std::span<const CK_ATTRIBUTE> requested, bool token, BirthCall call,
               config::NonExtractablePolicy policy) {
  Birth birth;
  bool no_extract = BoolOf(requested, CKA_EXTRACTABLE) == false;
  bool not_sensitive = BoolOf(requested, CKA_SENSITIVE) == false;
  // The domain key's unwrap template fixes CKA_PRIVATE=TRUE: a public key cannot be copied.
  bool is_public = BoolOf(requested, CKA_PRIVATE) == false;
  bool conflict = no_extract || is_public || (call == BirthCall::kCreate && not_sensitive);
  if (conflict && policy != config::NonExtractablePolicy::kTrustedWrap) {
    birth.attributes.assign(requested.begin(), requested.end());
    birth.reason = no_extract   ? "the application asked for CKA_EXTRACTABLE=FALSE"
                   : is_public ? "the application asked for CKA_PRIVATE=FALSE"
                               : "the application asked for CKA_SENSITIVE=FALSE";
    birth.verdict = token && policy == config::NonExtractablePolicy::kRefuse ? BirthVerdict::kRefuse
                                                                             : BirthVerdict::kLocal;
    return birth;
  }
  for (const CK_ATTRIBUTE& attribute : requested) {
    // Replaced below; a copy may only lower them, so a copy just drops the conflicting one.
    if (attribute.type == CKA_EXTRACTABLE || attribute.type == CKA_WRAP_WITH_TRUSTED) continue;
    if (attribute.type == CKA_PRIVATE) continue;
    if (attribute.type == CKA_SENSITIVE && call == BirthCall::kCreate) continue;
    birth.attributes.push_back(attribute);
  }
  if (call == BirthCall::kCreate) {
    birth.attributes.push_back(True(CKA_EXTRACTABLE));
    birth.attributes.push_back(True(CKA_WRAP_WITH_TRUSTED));
    birth.attributes.push_back(True(CKA_SENSITIVE));
  }
  birth.attributes.push_back(True(CKA_PRIVATE));
  if (conflict) birth.reason = "the application's CKA_EXTRACTABLE, CKA_SENSITIVE or CKA_PRIVATE = FALSE replaced by TRUE, so "
                   "that the key can be replicated (replication.non_extractable = \"trusted-wrap\")";
  return birth;
}

}  // namespace p11ha::replication
