// SPDX-License-Identifier: Apache-2.0
#include "tools/cli/status_replication.h"

#include "provider/core/error.h"
#include "provider/member/member_token_session.h"
#include "replication/domain_key.h"
#include "replication/object_identity.h"

namespace p11ha::cli {

ReplicationFacts InspectReplication(Member& member, const std::string& domain_label) {
  ReplicationFacts facts;
  try {
    MemberTokenSession token(member);
    auto keys = replication::FindDomainKeys(token, domain_label);
    CK_OBJECT_HANDLE domain_key = keys.empty() ? CK_INVALID_HANDLE : keys.front().handle;
    if (!keys.empty()) facts.domain = replication::CheckValueHex(keys.front().check);
    for (CK_OBJECT_CLASS key_class : {CKO_PRIVATE_KEY, CKO_SECRET_KEY}) {
      CK_BBOOL yes = CK_TRUE;
      CK_ATTRIBUTE match[] = {{CKA_CLASS, &key_class, sizeof key_class}, {CKA_TOKEN, &yes, sizeof yes}};
      std::vector<CK_OBJECT_HANDLE> found;
      if (CK_RV rv = token.FindObjects(match, found); rv != CKR_OK) {
        facts.problem = std::string("C_FindObjects -> ") + RvName(rv);
        return facts;
      }
      for (CK_OBJECT_HANDLE object : found) {
        replication::ObjectSummary summary;
        if (replication::ReadSummary(token, object, domain_key, domain_label, summary) != CKR_OK) continue;
        if (summary.kind == replication::ObjectKind::kApplication && summary.unwrappable)
          facts.local_keys.push_back(summary.label.empty() ? "(no label)" : summary.label);
      }
    }
  } catch (const std::exception& e) {
    facts.problem = e.what();
  }
  return facts;
}

}  // namespace p11ha::cli
