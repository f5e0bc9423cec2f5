// SPDX-License-Identifier: Apache-2.0
// The member calls of a new object's fan-out (Module::Replicate), each sent as ONE member call:
// what the source reads of the objects it just made, and what each target writes. A key birth
// otherwise makes a dozen short calls in a row, and each hand-off to a member's call worker that
// has gone to sleep during the key generation costs a wake-up (docs/BENCHMARKS.md section 4).
#pragma once

#include <p11-kit/pkcs11.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "config/config.h"
#include "provider/core/catalog_search.h"
#include "provider/core/creation.h"
#include "provider/core/object_catalog.h"
#include "provider/member/member.h"
#include "replication/key_birth.h"
#include "replication/object_copy.h"

namespace p11ha {

// What of the new objects leaves their member.
struct BirthChoice {
  bool token = false;         // one of them is a token object
  bool cannot_leave = false;  // a token key that the domain key cannot wrap
  bool keep_local = false;    // keys stay on their member (the public half of a pair still goes)
};
BirthChoice ChooseCopies(std::span<const ObjectFacts> facts, replication::BirthVerdict verdict,
                         config::NonExtractablePolicy policy);

struct NewObjectsAsked {
  CK_SESSION_HANDLE session = CK_INVALID_HANDLE;  // the virtual session's, on the home member (borrowed)
  Creation create;
  std::size_t count = 1;  // how many objects `create` makes
  CK_OBJECT_HANDLE domain_key = CK_INVALID_HANDLE;
  std::string domain_label;
  replication::BirthVerdict verdict = replication::BirthVerdict::kReplicate;
  config::NonExtractablePolicy policy = config::NonExtractablePolicy::kTrustedWrap;
  bool copies_wanted = false;  // there are other members: prepare the copies too
};

struct NewObjects {
  // The creation's answer, or the member call's own failure. Unless CKR_OK, nothing was made
  // (or nothing is known of it: a call that did not answer) and the rest is empty.
  CK_RV created = CKR_OK;
  std::vector<CK_OBJECT_HANDLE> made;
  // The first object whose facts could not be read.
  CK_RV rv = CKR_OK;
  // Per object of `made`, as far as they were read (an object not reached has no identity).
  std::vector<ObjectFacts> facts;
  std::vector<SearchKeys> search_keys;
  BirthChoice choice;
  std::vector<std::size_t> copied;  // the indexes into `made` that `plans` copy
  std::shared_ptr<const std::vector<replication::CopyPlan>> plans;
  // A copy that could not be prepared, for another reason than a key that cannot leave (which
  // only changes `choice`).
  CK_RV plan_rv = CKR_OK;
  std::string plan_error;
};

// Makes the new objects on `home`, then reads their facts and, where they travel, their copy
// plans: one member call, under the member's store lock.
NewObjects CreateAndRead(Member& home, const char* function, NewObjectsAsked asked);

struct CopiesAsked {
  CK_OBJECT_HANDLE domain_key = CK_INVALID_HANDLE;
  std::shared_ptr<const std::vector<replication::CopyPlan>> plans;
  std::vector<bool> skip;  // per plan: made by a rejoin's reconciliation instead
};

struct Copies {
  CK_RV rv = CKR_OK;
  std::string error;
  std::vector<CK_OBJECT_HANDLE> copies;  // per plan; CK_INVALID_HANDLE where skipped
  bool store_refused = false;            // replication::CopyError::store_refused
};

// Makes the copies on `target` in a session of their own, as the member instance `epoch`. A
// failure leaves none of them behind (as far as the member still answers).
Copies WriteCopies(Member& target, std::uint64_t epoch, CopiesAsked asked);

// Destroys copies made in `epoch`, unless the member has restarted since (the handles would
// name other objects of the new instance).
void DestroyCopies(Member& target, std::uint64_t epoch, std::span<const CK_OBJECT_HANDLE> copies);

}  // namespace p11ha
