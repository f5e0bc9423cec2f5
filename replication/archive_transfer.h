// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <p11-kit/pkcs11.h>

#include <cstddef>
#include <functional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "replication/archive.h"
#include "replication/object_identity.h"
#include "replication/token_session.h"

namespace p11ha::replication {

// A token that archive objects are read from or written to: a member of a cluster, or a token
// outside it (a backup token). The user is logged in and `domain_key` is the domain's key there.
struct ArchiveToken {
  TokenSession* token = nullptr;
  CK_OBJECT_HANDLE domain_key = CK_INVALID_HANDLE;
};

struct TokenObject {
  CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
  ObjectSummary summary;
};

// The application's token objects on one token, once per identity (SoftHSM can list an object
// twice): p11ha's own objects (the domain key, tombstones) and session objects are left out.
// Throws TransferError when the token cannot be listed or an object cannot be read.
std::vector<TokenObject> ListApplicationObjects(const ArchiveToken& token, const std::string& domain_label);

class TransferError : public std::runtime_error {
 public:
  TransferError(const std::string& what, CK_RV rv) : std::runtime_error(what), rv_(rv) {}
  CK_RV rv() const { return rv_; }

 private:
  CK_RV rv_;
};

// Hears (done, total) as objects are read or written, for progress display.
using TransferProgress = std::function<void(std::size_t done, std::size_t total)>;
using ObjectFilter = std::function<bool(const ObjectSummary&)>;

struct CollectedObjects {
  std::vector<ArchiveRecord> records;  // one per identity, in the order first found
  // Objects that matched but cannot leave their token (a key not born wrappable, or one the
  // token would not wrap), described for the operator: "EC private key \"x\" id 01 on hsm-1".
  std::vector<std::string> left_out;
};

// Reads every application token object that `select` accepts (all when empty) from the
// sources, each identity once, from the first source that holds it. Keys are wrapped under the
// domain key; nothing leaves in the clear. Throws TransferError.
CollectedObjects CollectObjects(std::span<const ArchiveToken> sources, const std::string& domain_label,
                                const ObjectFilter& select, const TransferProgress& progress);

struct RestoreResult {
  std::size_t created = 0;          // objects made, counted once per target
  std::size_t already_present = 0;  // records a target already held (by identity)
};

// Makes every record on every target that does not already hold its identity, and checks each
// new object's identity against its record. All or nothing: when any step fails, every object
// this call made is destroyed again, and TransferError says what failed and, should a removal
// fail too, which objects remain.
RestoreResult RestoreObjects(std::span<const ArchiveRecord> records, std::span<const ArchiveToken> targets,
                             const std::string& domain_label, const TransferProgress& progress);

}  // namespace p11ha::replication
