// SPDX-License-Identifier: Apache-2.0
#include "provider/core/birth_copies.h"

#include <algorithm>

#include "provider/core/error.h"
#include "provider/core/object_identity.h"
#include "provider/member/member_token_session.h"
#include "provider/member/token_calls.h"
#include "replication/object_identity.h"

namespace p11ha {
namespace {

bool CannotLeave(CK_RV rv) { return rv == CKR_KEY_NOT_WRAPPABLE || rv == CKR_KEY_UNEXTRACTABLE; }

bool Travels(const ObjectFacts& facts, const BirthChoice& choice) {
  return facts.token && !(choice.keep_local && replication::IsKeyClass(facts.object_class));
}

// The state each job shares with its caller (Member::CallWithState): the member's name is
// copied in, as an abandoned job may outlive the caller's view of the member.
struct NewObjectsJob : CallState {
  NewObjectsAsked asked;
  std::string member_name;
  NewObjects result;
};

struct CopiesJob : CallState {
  CopiesAsked asked;
  CK_SLOT_ID slot = 0;
  std::string member_name;
  Copies result;
};

CK_RV CreateAndReadInCall(const CK_FUNCTION_LIST& functions, NewObjectsJob& job) {
  const NewObjectsAsked& asked = job.asked;
  NewObjects& out = job.result;
  out.made.assign(asked.count, CK_INVALID_HANDLE);
  out.created = CKR_GENERAL_ERROR;  // stays so if the creation throws
  out.created = asked.create(functions, asked.session, out.made);
  if (out.created != CKR_OK) {
    out.made.clear();
    return out.created;
  }
  InCallTokenSession source(functions, asked.session, job.member_name);
  out.facts.resize(out.made.size());
  out.search_keys.resize(out.made.size());
  for (std::size_t i = 0; i < out.made.size(); ++i) {
    out.rv = ReadObjectFacts(source, out.made[i], asked.domain_key, asked.domain_label, &out.facts[i],
                             &out.search_keys[i]);
    if (out.rv != CKR_OK) return out.rv;
  }
  out.choice = ChooseCopies(out.facts, asked.verdict, asked.policy);
  if (!asked.copies_wanted || !out.choice.token || (out.choice.cannot_leave && !out.choice.keep_local))
    return CKR_OK;
  auto plans = std::make_shared<std::vector<replication::CopyPlan>>();
  try {
    for (std::size_t i = 0; i < out.made.size(); ++i) {
      if (!Travels(out.facts[i], out.choice)) continue;
      plans->push_back(replication::PrepareCopy(source, out.made[i], asked.domain_key, out.facts[i].object_class));
      out.copied.push_back(i);
    }
    out.plans = std::move(plans);
  } catch (const replication::CopyError& e) {
    out.copied.clear();
    if (CannotLeave(e.rv())) {
      out.choice.cannot_leave = true;
      out.choice.keep_local = asked.policy == config::NonExtractablePolicy::kLocal;
    } else {
      out.plan_rv = e.rv();
      out.plan_error = e.what();
    }
  }
  return CKR_OK;
}

CK_RV WriteInCall(const CK_FUNCTION_LIST& functions, CopiesJob& job) {
  Copies& out = job.result;
  if (functions.C_OpenSession == nullptr || functions.C_CloseSession == nullptr) {
    out.rv = CKR_FUNCTION_NOT_SUPPORTED;
    out.error = "member " + job.member_name + " has no C_OpenSession";
    return out.rv;
  }
  CK_SESSION_HANDLE session = CK_INVALID_HANDLE;
  out.rv = functions.C_OpenSession(job.slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &session);
  if (out.rv != CKR_OK) {
    out.error = "member " + job.member_name + ": C_OpenSession failed: " + RvName(out.rv);
    return out.rv;
  }
  InCallTokenSession target(functions, session, job.member_name);
  const std::vector<replication::CopyPlan>& plans = *job.asked.plans;
  try {
    for (std::size_t k = 0; k < plans.size(); ++k)
      out.copies.push_back(job.asked.skip[k] ? CK_INVALID_HANDLE
                                             : replication::ApplyCopy(plans[k], target, job.asked.domain_key));
  } catch (const replication::CopyError& e) {
    out.rv = e.rv();
    out.error = e.what();
    out.store_refused = e.store_refused();
  } catch (const std::exception& e) {
    out.rv = CKR_GENERAL_ERROR;
    out.error = e.what();
  }
  if (out.rv != CKR_OK)
    for (CK_OBJECT_HANDLE copy : out.copies)
      if (copy != CK_INVALID_HANDLE) target.DestroyObject(copy);
  functions.C_CloseSession(session);
  return out.rv;
}

}  // namespace

BirthChoice ChooseCopies(std::span<const ObjectFacts> facts, replication::BirthVerdict verdict,
                         config::NonExtractablePolicy policy) {
  BirthChoice choice;
  choice.token = std::any_of(facts.begin(), facts.end(), [](const ObjectFacts& f) { return f.token; });
  choice.cannot_leave = std::any_of(facts.begin(), facts.end(), [](const ObjectFacts& f) { return f.token && f.local; });
  choice.keep_local = verdict == replication::BirthVerdict::kLocal ||
                      (choice.cannot_leave && policy == config::NonExtractablePolicy::kLocal);
  return choice;
}

NewObjects CreateAndRead(Member& home, const char* function, NewObjectsAsked asked) {
  auto job = std::make_shared<NewObjectsJob>();
  job->asked = std::move(asked);
  job->member_name = home.name();
  const CK_RV rv = home.CallWithState(function, CallKind::kStore, job,
                                      [](const CK_FUNCTION_LIST& functions, NewObjectsJob& state) {
                                        return CreateAndReadInCall(functions, state);
                                      });
  if (!job->Finished()) {
    NewObjects failed;
    failed.created = rv == CKR_OK ? CKR_GENERAL_ERROR : rv;
    return failed;
  }
  NewObjects result = std::move(job->result);
  // An exception ended the body after the creation: the reads count as failed.
  if (result.created == CKR_OK && result.rv == CKR_OK && rv != CKR_OK) result.rv = rv;
  return result;
}

Copies WriteCopies(Member& target, std::uint64_t epoch, CopiesAsked asked) {
  auto job = std::make_shared<CopiesJob>();
  job->asked = std::move(asked);
  job->slot = target.slot();
  job->member_name = target.name();
  PinnedEpoch pin(&target, epoch);
  const CK_RV rv = target.CallWithState("C_UnwrapKey (copies of new objects)", CallKind::kStore, job,
                                        [](const CK_FUNCTION_LIST& functions, CopiesJob& state) {
                                          return WriteInCall(functions, state);
                                        });
  Copies result;
  if (job->Finished()) result = std::move(job->result);
  if (result.rv != CKR_OK || rv == CKR_OK) return result;
  // The call failed around a body that did not (an exception, or the body never ran).
  DestroyCopies(target, epoch, result.copies);
  result.rv = rv;
  result.error = "member " + target.name() + " did not make the copies: " + RvName(rv);
  return result;
}

void DestroyCopies(Member& target, std::uint64_t epoch, std::span<const CK_OBJECT_HANDLE> copies) {
  if (target.epoch() != epoch) return;
  try {
    MemberTokenSession token(target);
    if (token.epoch() != epoch) return;
    for (CK_OBJECT_HANDLE copy : copies)
      if (copy != CK_INVALID_HANDLE) token.DestroyObject(copy);
  } catch (const std::exception&) {
    // The member failed meanwhile; its copies are found by identity (`p11ha verify`, rejoin).
  }
}

}  // namespace p11ha
