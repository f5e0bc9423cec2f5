// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <p11-kit/pkcs11.h>

#include <optional>
#include <string>
#include <vector>

#include "replication/token_session.h"

namespace p11ha::replication {

// A deletion that could not reach every member (DESIGN.md "Replication"): a CKO_DATA token
// object with CKA_APPLICATION "p11ha" on the members that applied it, naming the identity of
// the destroyed object. A member that returns drops that object instead of bringing it back.
inline constexpr const char* kTombstoneLabel = "p11ha-tombstone";

struct Tombstone {
  CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
  std::string identity;  // raw SHA-256 bytes, as ObjectSummary::identity
};

// The record's CKA_VALUE, "p11ha-tombstone v1 <identity hex>\n"; nullopt for anything else.
std::string FormatTombstone(const std::string& identity);
std::optional<std::string> ParseTombstone(const std::vector<CK_BYTE>& value);

// Creates a tombstone for `identity` (private when `is_private`: a public one serves
// unauthenticated callers, who cannot create private objects). Returns the token's answer.
CK_RV CreateTombstone(TokenSession& token, const std::string& identity, bool is_private, CK_OBJECT_HANDLE& out);

// Every tombstone the session can see. Records that do not parse are left out.
CK_RV FindTombstones(TokenSession& token, std::vector<Tombstone>& out);

}  // namespace p11ha::replication
