// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <p11-kit/pkcs11.h>

#include <string>

#include "provider/core/object_catalog.h"
#include "provider/member/member.h"
#include "replication/token_session.h"

namespace p11ha {

// Reads what identifies an object on a member (DESIGN.md "Object identity"; the rules live in
// replication::ReadSummary), and what applications search it by. `domain_key` is the member's
// domain key handle, or CK_INVALID_HANDLE: keys then get attribute identities. Secret values
// never enter it.
CK_RV ReadObjectFacts(Member& member, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object,
                      CK_OBJECT_HANDLE domain_key, const std::string& domain_label, ObjectFacts* facts,
                      SearchKeys* keys);
// The same over a token session (InCallTokenSession, inside one member call).
CK_RV ReadObjectFacts(replication::TokenSession& token, CK_OBJECT_HANDLE object, CK_OBJECT_HANDLE domain_key,
                      const std::string& domain_label, ObjectFacts* facts, SearchKeys* keys);

// Reads again what can change after creation: CKA_LABEL and CKA_ID into `keys` (the rest is
// left alone).
CK_RV ReadSearchKeys(Member& member, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object, SearchKeys* keys);

}  // namespace p11ha
