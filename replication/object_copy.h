// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <p11-kit/pkcs11.h>

#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "replication/attributes.h"
#include "replication/token_session.h"

namespace p11ha::replication {

// A copy that failed: what() says which step on which token; rv() is that token's answer.
class CopyError : public std::runtime_error {
 public:
  CopyError(const std::string& what, CK_RV rv, bool store_refused = false)
      : std::runtime_error(what), rv_(rv), store_refused_(store_refused) {}
  CK_RV rv() const { return rv_; }
  // The target's own C_UnwrapKey or C_CreateObject said CKR_GENERAL_ERROR: its object store
  // refused the copy (not a difference p11ha found afterwards).
  bool store_refused() const { return store_refused_; }

 private:
  CK_RV rv_;
  bool store_refused_;
};

// What it takes to make an object on another member, read once from the source and applied to
// every target (in parallel: a plan is read-only once made).
struct CopyPlan {
  CK_OBJECT_CLASS object_class = CKO_DATA;
  bool by_wrap = false;           // private and secret keys
  std::vector<CK_BYTE> wrapped;   // the key under the domain key (only the domain key opens it)
  AttributeList attributes;       // the unwrap template, or the object's attributes
};

// Reads the object on `source`. Private and secret keys are wrapped with
// CKM_AES_KEY_WRAP_PAD under `domain_key`; everything else is read by attributes. Throws
// CopyError (rv CKR_KEY_UNEXTRACTABLE or CKR_KEY_NOT_WRAPPABLE for a key that cannot leave).
// A caller that knows the object's class (from a listing) passes it and saves a member call.
CopyPlan PrepareCopy(TokenSession& source, CK_OBJECT_HANDLE object, CK_OBJECT_HANDLE domain_key,
                     std::optional<CK_OBJECT_CLASS> object_class = std::nullopt);

// What keeps a key from being copied under the domain key, read from its attributes (a plan's
// or any list holding CKA_PRIVATE, CKA_SENSITIVE and CKA_WRAP_WITH_TRUSTED): the domain key's
// unwrap template pins all three to true (DESIGN.md "Replication"). Empty when nothing does.
std::string UncopyableBecause(const AttributeList& attributes);
// The attributes UncopyableBecause needs.
std::span<const CK_ATTRIBUTE_TYPE> PinnedByUnwrapTemplate();

// Makes the object on `target` and verifies it: a key's copy wrapped under the target's domain
// key must give the same bytes; a public object's attributes must read back equal. A copy that
// fails verification is destroyed. Throws CopyError.
CK_OBJECT_HANDLE ApplyCopy(const CopyPlan& plan, TokenSession& target, CK_OBJECT_HANDLE domain_key);

}  // namespace p11ha::replication
