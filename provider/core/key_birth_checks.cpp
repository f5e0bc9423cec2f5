// SPDX-License-Identifier: Apache-2.0
// What the module lets an application create: p11ha's reserved names, and key birth
// (replication::KeyBirth) applied with the configured policy.
#include "provider/core/log.h"
#include "provider/core/module.h"
#include "replication/object_identity.h"

namespace p11ha {

CK_RV Module::CheckReservedNames(std::span<const CK_ATTRIBUTE> attributes) const {
  if (replication::TemplateHas(attributes, CKA_LABEL, config_.domain_key_label) ||
      replication::TemplateHas(attributes, CKA_APPLICATION, replication::kP11haApplication)) {
    log::Get()->warn("refused a template that names p11ha's own objects (label '{}' or application '{}')",
                     config_.domain_key_label, replication::kP11haApplication);
    return CKR_ATTRIBUTE_VALUE_INVALID;
  }
  return CKR_OK;
}

CK_RV Module::BirthOf(std::span<const CK_ATTRIBUTE> requested, bool token, replication::BirthCall call,
                      const char* function, replication::Birth& birth) const {
  if (CK_RV rv = CheckReservedNames(requested); rv != CKR_OK) return rv;
  birth = replication::KeyBirth(requested, token, call, config_.non_extractable);
  if (birth.verdict == replication::BirthVerdict::kRefuse) {
    log::Get()->warn("{}: refused: {} and replication.non_extractable = \"refuse\"", function, birth.reason);
    return CKR_ATTRIBUTE_VALUE_INVALID;
  }
  if (!birth.reason.empty()) log::Get()->info("{}: {}", function, birth.reason);
  return CKR_OK;
}

}  // namespace p11ha
