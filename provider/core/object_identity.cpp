// SPDX-License-Identifier: Apache-2.0
#include "provider/core/object_identity.h"

#include "provider/member/member_token_session.h"
#include "replication/object_identity.h"

namespace p11ha {

CK_RV ReadObjectFacts(Member& member, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object,
                      CK_OBJECT_HANDLE domain_key, const std::string& domain_label, ObjectFacts* facts) {
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
  return CKR_OK;
}

}  // namespace p11ha
