// SPDX-License-Identifier: Apache-2.0
// A reconciliation's missing copies: each object some scanned member lacks is read from a holder
// (PrepareCopy) and written to each member that takes it (ApplyCopy), the next object's source
// read while this one's targets write.
#include <algorithm>
#include <future>
#include <optional>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "replication/attributes.h"
#include "replication/object_copy.h"
#include "replication/object_identity.h"
#include "replication/reconcile_pass.h"

namespace p11ha::replication::reconcile_pass {

template <typename WaitForHolders>
void Reconciler::CopyTo(const MissingCopy& missing, std::optional<SourcePlan> planned,
                        const WaitForHolders& holders_free) {
  const std::string& identity = missing.identity;
  const ObjectSummary& summary = missing.summary;
  const std::vector<MemberState*>& holders = missing.holders;
  const std::vector<MemberState*>& targets = missing.targets;
  std::vector<DriftEntry> entries(targets.size());
  for (DriftEntry& entry : entries) {
    entry = {.kind = DriftKind::kMissing, .object = DescribeObject(summary), .identity = identity,
             .detail = "held by " + Join(Names(holders)), .action = "copy it from " + holders.front()->name()};
  }
  if (options_.dry_run) {
    for (std::size_t i = 0; i < targets.size(); ++i) {
      entries[i].state = ActionState::kPlanned;
      planned_holders_[identity].insert(targets[i]);
      Add(*targets[i], std::move(entries[i]));
    }
    return;
  }
  if (!planned) planned = PlanFrom(identity, holders);
  std::string why = std::move(planned->why);
  std::optional<std::pair<MemberState*, CopyPlan>> source = std::move(planned->source);
  if (source && IsKeyClass(summary.object_class)) {
    if (std::string refused = UncopyableBecause(source->second.attributes); !refused.empty()) {
      ReportUncopyable(identity, summary, holders, targets, refused);
      return;
    }
  }
  std::vector<std::pair<MemberState*, CK_OBJECT_HANDLE>> made;
  for (std::size_t i = 0; i < targets.size(); ++i) {
    DriftEntry& entry = entries[i];
    if (!source && why.empty()) {
      // Every holder lost it since the scan: deleted meanwhile, nothing to copy.
      entry.drift = false;
      entry.detail += "; deleted on every holder since";
      continue;
    }
    if (!source) {
      entry.state = ActionState::kFailed;
      entry.error = why;
      continue;
    }
    entry.action = "copy it from " + source->first->name();
    try {
      CK_OBJECT_HANDLE copy = ApplyCopy(source->second, targets[i]->token(), targets[i]->member->domain_key);
      if (options_.keep_copy && !options_.keep_copy(IndexOf(*targets[i]), identity)) {
        entry.detail += "; the application deleted it during the copy";
        if (std::string error = Destroy(*targets[i], copy); !error.empty()) {
          entry.state = ActionState::kFailed;
          entry.error = "the copy could not be removed again: " + error;
        } else {
          entry.drift = false;
          entry.action = "copy removed again";
        }
        continue;
      }
      made.emplace_back(targets[i], copy);
      entry.state = ActionState::kDone;
    } catch (const CopyError& e) {
      entry.state = ActionState::kFailed;
      entry.error = std::string(e.what()) + ", " + RvText(e.rv());
      entry.store_refused = e.store_refused();
    }
  }
  holders_free();
  if (source && !made.empty() && VanishedEverywhere(identity, summary, holders)) {
    // Deleted while we copied (an application's C_DestroyObject reaches members one by one):
    // keeping the copies would bring the object back.
    for (auto& [member, handle] : made) Destroy(*member, handle);
    for (DriftEntry& entry : entries) {
      if (entry.state != ActionState::kDone) continue;
      entry.state = ActionState::kFailed;
      entry.error = "the object was deleted on every holder during the copy; the copy was removed again";
    }
    made.clear();
  }
  for (auto& [member, handle] : made) member->objects[identity].push_back({handle, summary});
  for (std::size_t i = 0; i < targets.size(); ++i) Add(*targets[i], std::move(entries[i]));
}

void Reconciler::CopyMissing() {
  const std::vector<std::string> identities = Identities();
  std::size_t at = 0;
  std::optional<MissingCopy> current = NextMissing(identities, at);
  std::optional<SourcePlan> current_plan;
  while (current) {
    // Read before the next source's reads start: both may be on the same member.
    if (!current_plan && !options_.dry_run) current_plan = PlanFrom(current->identity, current->holders);
    std::optional<MissingCopy> next = NextMissing(identities, at);
    // The next source's reads and wrap run while this copy's targets write (SoftHSM writes
    // each object to disk): on separate members, so no session is used by two threads.
    std::future<SourcePlan> next_plan;
    if (next && options_.overlap_copies && !options_.dry_run && Disjoint(next->holders, current->targets)) {
      try {
        next_plan = std::async(std::launch::async, [this, &next] { return PlanFrom(next->identity, next->holders); });
      } catch (const std::system_error&) {
        // No thread to be had: the next plan is read in its turn.
      }
    }
    CopyTo(*current, std::move(current_plan), [&next_plan] {
      if (next_plan.valid()) next_plan.wait();
    });
    current_plan.reset();
    if (next_plan.valid()) current_plan = next_plan.get();
    current = std::move(next);
  }
}

bool Reconciler::Disjoint(const std::vector<MemberState*>& a, const std::vector<MemberState*>& b) {
  return std::none_of(a.begin(), a.end(),
                      [&b](MemberState* member) { return std::find(b.begin(), b.end(), member) != b.end(); });
}

std::optional<Reconciler::MissingCopy> Reconciler::NextMissing(const std::vector<std::string>& identities,
                                                               std::size_t& at) {
  while (at < identities.size()) {
    const std::string& identity = identities[at++];
    if (Settled(identity)) continue;
    std::vector<MemberState*> holders = Holders(identity);
    const ObjectSummary summary = holders.front()->objects[identity].front().summary;
    if (summary.unwrappable) continue;
    std::vector<MemberState*> targets;
    for (MemberState& member : states_) {
      if (!member.Takes(summary) || member.Holds(identity) || !Writable(member)) continue;
      if (options_.claim_copy && !options_.dry_run && !options_.claim_copy(IndexOf(member), identity)) continue;
      targets.push_back(&member);
    }
    if (targets.empty()) continue;
    // A dry run wraps nothing, so it reads what would refuse the copy; a copy learns it from
    // the plan's attributes (CopyTo), one member call less per key.
    if (options_.dry_run) {
      if (std::string why = Uncopyable(*holders.front(), identity); !why.empty()) {
        ReportUncopyable(identity, summary, holders, targets, why);
        continue;
      }
    }
    return MissingCopy{identity, summary, std::move(holders), std::move(targets)};
  }
  return std::nullopt;
}

void Reconciler::ReportUncopyable(const std::string& identity, const ObjectSummary& summary,
                                  const std::vector<MemberState*>& holders, const std::vector<MemberState*>& targets,
                                  const std::string& why) {
  for (MemberState* target : targets)
    Add(*target, {.kind = DriftKind::kMissing, .object = DescribeObject(summary), .identity = identity,
                  .detail = "held by " + Join(Names(holders)) + "; " + why});
}

std::string Reconciler::Uncopyable(MemberState& holder, const std::string& identity) {
  const Copy& copy = holder.objects[identity].front();
  if (!IsKeyClass(copy.summary.object_class)) return {};
  AttributeList pinned;
  if (ReadAttributes(holder.token(), copy.handle, PinnedByUnwrapTemplate(), pinned) != CKR_OK) return {};
  return UncopyableBecause(pinned);
}

std::vector<std::string> Reconciler::Names(const std::vector<MemberState*>& members) {
  std::vector<std::string> names;
  for (const MemberState* member : members) names.push_back(member->name());
  return names;
}

Reconciler::SourcePlan Reconciler::PlanFrom(const std::string& identity, const std::vector<MemberState*>& holders) {
  SourcePlan plan;
  plan.source = Plan(identity, holders, plan.why);
  return plan;
}

std::optional<std::pair<MemberState*, CopyPlan>> Reconciler::Plan(const std::string& identity,
                                                                  const std::vector<MemberState*>& holders,
                                                                  std::string& why) {
  for (MemberState* holder : holders) {
    if (!holder->Holds(identity)) continue;
    try {
      const Copy& copy = holder->objects.find(identity)->second.front();
      return std::make_pair(holder, PrepareCopy(holder->token(), copy.handle, holder->member->domain_key,
                                                copy.summary.object_class));
    } catch (const CopyError& e) {
      if (!Gone(e.rv())) why = std::string(e.what()) + ", " + RvText(e.rv());
    }
  }
  return std::nullopt;
}

bool Reconciler::VanishedEverywhere(const std::string& identity, const ObjectSummary& summary,
                                    const std::vector<MemberState*>& holders) {
  for (MemberState* holder : holders) {
    CK_OBJECT_CLASS object_class = 0;
    CK_ATTRIBUTE probe[] = {{CKA_CLASS, &object_class, sizeof object_class}};
    CK_RV rv = holder->token().GetAttributeValue(holder->objects[identity].front().handle, probe);
    if (!Gone(rv)) return false;
    // The handle is stale, but another process may have replaced the object (a duplicate's
    // removal): look again before concluding.
    std::optional<std::vector<CK_OBJECT_HANDLE>> found = FindCopies(*holder, identity, summary);
    if (!found || !found->empty()) return false;
  }
  return true;
}

std::optional<std::vector<CK_OBJECT_HANDLE>> Reconciler::FindCopies(MemberState& member, const std::string& identity,
                                                                    const ObjectSummary& like) {
  CK_BBOOL yes = CK_TRUE;
  CK_OBJECT_CLASS object_class = like.object_class;
  std::string label = like.label;
  CK_ATTRIBUTE match[] = {{CKA_TOKEN, &yes, sizeof yes},
                          {CKA_CLASS, &object_class, sizeof object_class},
                          {CKA_LABEL, label.empty() ? nullptr : label.data(), label.size()}};
  std::vector<CK_OBJECT_HANDLE> handles;
  if (member.token().FindObjects(match, handles) != CKR_OK) return std::nullopt;
  std::sort(handles.begin(), handles.end());
  handles.erase(std::unique(handles.begin(), handles.end()), handles.end());
  std::vector<CK_OBJECT_HANDLE> same;
  for (CK_OBJECT_HANDLE handle : handles) {
    ObjectSummary summary;
    CK_RV rv = ReadSummary(member.token(), handle, member.member->domain_key, options_.domain_label, summary);
    if (rv == CKR_OK && summary.identity == identity) same.push_back(handle);
  }
  return same;
}

}  // namespace p11ha::replication::reconcile_pass
