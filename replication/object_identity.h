// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <p11-kit/pkcs11.h>

#include <string>
#include <vector>

#include "replication/token_session.h"

namespace p11ha::replication {

// CKA_APPLICATION of p11ha's own data objects (tombstones).
inline constexpr const char* kP11haApplication = "p11ha";

// What p11ha's own objects are; applications never see anything but kApplication.
enum class ObjectKind { kApplication, kDomainKey, kTombstone };

// What identifies an object on any member (DESIGN.md "Object identity") and what replication
// needs to know about it.
struct ObjectSummary {
  // SHA-256, raw bytes. Private and secret keys: over the key wrapped under the domain key,
  // which is byte-identical on every member (AES key wrap is deterministic). Otherwise over
  // class, key type and public material (RSA modulus, EC point, the value of certificates and
  // data objects); keys that cannot be wrapped fall back to their attributes.
  std::string identity;
  CK_OBJECT_CLASS object_class = CKO_DATA;
  CK_KEY_TYPE key_type = CK_UNAVAILABLE_INFORMATION;
  bool token = false;
  bool is_private = false;
  bool by_wrap = false;  // the identity is a wrap fingerprint
  // A private or secret key that cannot be copied (CKA_EXTRACTABLE, CKA_PRIVATE, CKA_SENSITIVE
  // or CKA_WRAP_WITH_TRUSTED false, or a type the member cannot wrap, like Ed25519 on SoftHSM
  // 2.6.1): it can live on one member only.
  bool unwrappable = false;
  ObjectKind kind = ObjectKind::kApplication;
  std::string label;
  std::vector<CK_BYTE> id;
};

// Reads the summary. `domain_key` is the token's domain key handle, or CK_INVALID_HANDLE when
// it has none (or the user is not logged in): keys then get attribute identities.
CK_RV ReadSummary(TokenSession& token, CK_OBJECT_HANDLE object, CK_OBJECT_HANDLE domain_key,
                  const std::string& domain_label, ObjectSummary& out);

std::string IdentityHex(const std::string& identity);

}  // namespace p11ha::replication
