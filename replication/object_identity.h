// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <p11-kit/pkcs11.h>

#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include "replication/token_session.h"

namespace p11ha::replication {

// CKA_APPLICATION of p11ha's own data objects (tombstones).
inline constexpr const char* kP11haApplication = "p11ha";

// Private and secret keys: copied by wrapping under the domain key, identified by that wrap;
// every other object is copied, and identified, by its attributes.
inline bool IsKeyClass(CK_OBJECT_CLASS object_class) {
  return object_class == CKO_PRIVATE_KEY || object_class == CKO_SECRET_KEY;
}

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
  // Whether the object has these attributes at all (data objects have no CKA_ID).
  bool has_label = false;
  bool has_id = false;
};

// Reads the summary. `domain_key` is the token's domain key handle, or CK_INVALID_HANDLE when
// it has none (or the user is not logged in): keys then get attribute identities.
CK_RV ReadSummary(TokenSession& token, CK_OBJECT_HANDLE object, CK_OBJECT_HANDLE domain_key,
                  const std::string& domain_label, ObjectSummary& out);

std::string IdentityHex(const std::string& identity);

// For operators: 'certificate "web" id 0a01', 'EC private key (no label)'. Labels are made
// printable, as they come from tokens and end up on terminals.
std::string DescribeObject(const ObjectSummary& summary);

// What a failed creation asked for, when the member failed before p11ha learnt which object
// it made (the call itself timed out, or the new object could not be read): the class, and
// CKA_LABEL and CKA_ID where the template set them.
struct OrphanName {
  std::optional<CK_OBJECT_CLASS> object_class;
  std::optional<std::string> label;
  std::optional<std::vector<CK_BYTE>> id;

  bool operator<(const OrphanName& other) const {
    return std::tie(object_class, label, id) < std::tie(other.object_class, other.label, other.id);
  }
};

// The name of what `requested` makes; `implied` is the class the call makes when the template
// does not say (a key pair's halves, a secret key). Has neither label nor id when the template
// sets neither: such an object cannot be told from the application's own.
OrphanName NameOfCreation(std::span<const CK_ATTRIBUTE> requested, std::optional<CK_OBJECT_CLASS> implied);

// The names a failed creation is remembered by: NameOfCreation for a token object, none for a
// session object (it dies with its session, so nothing is left behind).
std::vector<OrphanName> NamesOfCreation(bool token, std::span<const CK_ATTRIBUTE> requested,
                                        std::optional<CK_OBJECT_CLASS> implied);

}  // namespace p11ha::replication
