// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <p11-kit/pkcs11.h>

#include <span>
#include <string>
#include <vector>

#include "config/config.h"

namespace p11ha::replication {

// What becomes of a key an application asks for (DESIGN.md "Replication", issue #3 item 2).
enum class BirthVerdict {
  kReplicate,  // born CKA_EXTRACTABLE + CKA_WRAP_WITH_TRUSTED + CKA_SENSITIVE, copied everywhere
  kLocal,      // made as asked, kept on one member (non_extractable = "local", or a session key)
  kRefuse,     // non_extractable = "refuse": the call fails
};

struct Birth {
  BirthVerdict verdict = BirthVerdict::kReplicate;
  std::vector<CK_ATTRIBUTE> attributes;  // points into the caller's template and static values
  std::string reason;                    // why it is local or refused, for the log
};

// Where a key is being made from.
enum class BirthCall { kCreate, kCopy };

// The template a private or secret key is made with. CKA_EXTRACTABLE=FALSE, CKA_SENSITIVE=FALSE
// or CKA_PRIVATE=FALSE asked by the application conflict with replication (the domain key's
// unwrap template fixes CKA_PRIVATE and CKA_SENSITIVE) and follow `policy`; otherwise the key
// is born private, sensitive and wrappable only by a trusted key (the domain key). Session keys get
// the same birth, because applications (Java's keytool) copy them to the token later; a
// conflict on a session key keeps it as asked. C_CopyObject cannot change CKA_WRAP_WITH_TRUSTED
// or raise CKA_EXTRACTABLE, so a copy's template only loses conflicting values and gains
// CKA_PRIVATE=TRUE (which a copy may raise).
// `token` is whether the key will be a token object.
Birth KeyBirth(std::span<const CK_ATTRIBUTE> requested, bool token, BirthCall call,
               config::NonExtractablePolicy policy);

// CKA_TOKEN of a template, else `otherwise`.
bool TemplateSaysToken(std::span<const CK_ATTRIBUTE> requested, bool otherwise);
// CKA_CLASS of a template, if given.
bool TemplateClass(std::span<const CK_ATTRIBUTE> requested, CK_OBJECT_CLASS& out);
// A byte-string attribute of a template equals `value`.
bool TemplateHas(std::span<const CK_ATTRIBUTE> requested, CK_ATTRIBUTE_TYPE type, const std::string& value);

}  // namespace p11ha::replication
