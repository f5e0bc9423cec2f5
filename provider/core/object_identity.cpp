// SPDX-License-Identifier: Apache-2.0
#include "provider/core/object_identity.h"

#include <array>

#include "provider/member/member_token_session.h"
#include "replication/attributes.h"
#include "replication/object_identity.h"

namespace p11ha {

CK_RV ReadObjectFacts(Member& member, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object,
                      CK_OBJECT_HANDLE domain_key, const std::string& domain_label, ObjectFacts* facts,
                      SearchKeys* keys) {
  MemberTokenSession token(member, session);
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
  // Labels and ids are short: one read into buffers of this size answers nearly every object.
  constexpr std::size_t kGuess = 128;
  std::array<CK_BYTE, kGuess> label{};
  std::array<CK_BYTE, kGuess> id{};
  CK_ATTRIBUTE query[] = {{CKA_LABEL, label.data(), kGuess}, {CKA_ID, id.data(), kGuess}};
  MemberTokenSession token(member, session);
  CK_RV rv = token.GetAttributeValue(object, query);
  if (rv != CKR_OK && rv != CKR_ATTRIBUTE_TYPE_INVALID && rv != CKR_BUFFER_TOO_SMALL &&
      rv != CKR_ATTRIBUTE_SENSITIVE)
    return rv;
  // CK_UNAVAILABLE_INFORMATION means absent or too long, and the CK_RV does not say which when
  // both happen in one call (SoftHSM reports CKR_ATTRIBUTE_TYPE_INVALID first): read it again
  // with the size query.
  if (query[0].ulValueLen == CK_UNAVAILABLE_INFORMATION || query[1].ulValueLen == CK_UNAVAILABLE_INFORMATION) {
    static constexpr CK_ATTRIBUTE_TYPE kNames[] = {CKA_LABEL, CKA_ID};
    replication::AttributeList read;
    if (rv = replication::ReadAttributes(token, object, kNames, read); rv != CKR_OK) return rv;
    const replication::Attribute* read_label = replication::FindAttribute(read, CKA_LABEL);
    const replication::Attribute* read_id = replication::FindAttribute(read, CKA_ID);
    keys->label = read_label ? std::optional<std::string>(std::string(read_label->value.begin(), read_label->value.end()))
                             : std::nullopt;
    keys->id = read_id ? std::optional<std::vector<CK_BYTE>>(read_id->value) : std::nullopt;
    return CKR_OK;
  }
  keys->label = std::string(label.begin(), label.begin() + static_cast<std::ptrdiff_t>(query[0].ulValueLen));
  keys->id = std::vector<CK_BYTE>(id.begin(), id.begin() + static_cast<std::ptrdiff_t>(query[1].ulValueLen));
  return CKR_OK;
}

}  // namespace p11ha
