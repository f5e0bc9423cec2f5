// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <p11-kit/pkcs11.h>

#include "provider/core/object_catalog.h"
#include "provider/member/member.h"

namespace p11ha {

// Reads what identifies an object on a member (DESIGN.md "Object identity"): class, key type
// and the public material (RSA modulus, EC point, the value of certificates and data objects).
// Where the material cannot be read (EC and secret keys) the identity falls back to the
// attributes, until replication gives a wrap fingerprint. Secret values never enter it.
CK_RV ReadObjectFacts(Member& member, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object, ObjectFacts* facts);

}  // namespace p11ha
