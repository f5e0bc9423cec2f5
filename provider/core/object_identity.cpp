// SPDX-License-Identifier: Apache-2.0
#include "provider/core/object_identity.h"

#include "provider/member/member_token_session.h"
#include "replication/attributes.h"
#include "replication/object_identity.h"

namespace p11ha {

CK_RV ReadObjectFacts(Member& member, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object,
                      CK_OBJECT_HANDLE domain_key, const std::string& domain_label, ObjectFacts* facts,
                      SearchKeys* keys) {
  MemberTokenSession token(member, session);
  return ReadObjectFacts(token, object, domain_key, domain_label, facts, keys);
}

CK_RV ReadObjectFacts(replication::TokenSession& token, CK_OBJECT_HANDLE object, CK_OBJECT_HANDLE domain_key,
                      const std::string& domain_label, ObjectFacts* facts, SearchKeys* keys) {
  replication::ObjectSummary summary;
  CK_RV rv = replication::ReadSummary(token, object, domain_key, domain_label, summary);
  if (rv != CKR_OK) return rv;
  facts->identity = std::move(summary.identity);
  facts->object_class = summary.object_class;
  facts->token = summary.token;
  facts->is_private = summary.is_private;
  facts->hidden = summary.kind != replication::ObjectKind::kApplication;
  facts->local = summary.unwrappable;
  *keys = SearchKeys{};
  if (summary.key_type != CK_UNAVAILABLE_INFORMATION) keys->key_type = summary.key_type;
  if (summary.has_label) keys->label = std::move(summary.label);
  if (summary.has_id) keys->id = std::move(summary.id);
  return CKR_OK;
}

CK_RV ReadSearchKeys(Member& member, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object, SearchKeys* keys) {
  static constexpr CK_ATTRIBUTE_TYPE kNames[] = {CKA_LABEL, CKA_ID};
  MemberTokenSession token(member, session);
  replication::AttributeList read;
  if (CK_RV rv = replication::ReadAttributes(token, object, kNames, read); rv != CKR_OK) return rv;
  const replication::Attribute* label = replication::FindAttribute(read, CKA_LABEL);
  const replication::Attribute* id = replication::FindAttribute(read, CKA_ID);
  keys->label = label ? std::optional<std::string>(std::string(label->value.begin(), label->value.end())) : std::nullopt;
  keys->id = id ? std::optional<std::vector<CK_BYTE>>(id->value) : std::nullopt;
  return CKR_OK;
}

}  // namespace p11ha
