// SPDX-License-Identifier: Apache-2.0
#include "replication/archive_transfer.h"

#include <algorithm>
#include <set>
#include <utility>

#include "replication/object_copy.h"
#include "replication/object_identity.h"

namespace p11ha::replication {
namespace {

std::set<std::string> IdentitiesOn(const ArchiveToken& token, const std::string& domain_label) {
  std::set<std::string> held;
  for (TokenObject& object : ListApplicationObjects(token, domain_label)) held.insert(std::move(object.summary.identity));
  return held;
}

struct Created {
  const ArchiveToken* target;
  CK_OBJECT_HANDLE handle;
  std::string what;
};

// Removes what a failed restore made; returns what could not be removed, for the message.
std::string RollBack(const std::vector<Created>& created) {
  std::string remaining;
  for (auto it = created.rbegin(); it != created.rend(); ++it) {
    if (it->target->token->DestroyObject(it->handle) != CKR_OK)
      remaining += (remaining.empty() ? "" : ", ") + it->what + " on " + it->target->token->name();
  }
  return remaining;
}

}  // namespace

std::vector<TokenObject> ListApplicationObjects(const ArchiveToken& token, const std::string& domain_label) {
  CK_BBOOL yes = CK_TRUE;
  CK_ATTRIBUTE match[] = {{CKA_TOKEN, &yes, sizeof yes}};
  std::vector<CK_OBJECT_HANDLE> handles;
  if (CK_RV rv = token.token->FindObjects(match, handles); rv != CKR_OK)
    throw TransferError(token.token->name() + ": listing its objects failed", rv);
  std::sort(handles.begin(), handles.end());
  handles.erase(std::unique(handles.begin(), handles.end()), handles.end());

  std::vector<TokenObject> objects;
  std::set<std::string> seen;
  for (CK_OBJECT_HANDLE handle : handles) {
    TokenObject object{handle, {}};
    CK_RV rv = ReadSummary(*token.token, handle, token.domain_key, domain_label, object.summary);
    if (rv != CKR_OK)
      throw TransferError(token.token->name() + ": reading object handle " + std::to_string(handle) + " failed", rv);
    if (object.summary.kind != ObjectKind::kApplication || !object.summary.token) continue;
    if (!seen.insert(object.summary.identity).second) continue;
    objects.push_back(std::move(object));
  }
  return objects;
}

CollectedObjects CollectObjects(std::span<const ArchiveToken> sources, const std::string& domain_label,
                                const ObjectFilter& select, const TransferProgress& progress) {
  struct Found {
    const ArchiveToken* source;
    TokenObject object;
  };
  std::vector<Found> chosen;
  std::set<std::string> seen;
  CollectedObjects collected;
  for (const ArchiveToken& source : sources) {
    for (TokenObject& object : ListApplicationObjects(source, domain_label)) {
      if (select && !select(object.summary)) continue;
      if (!seen.insert(object.summary.identity).second) continue;
      // A key the domain key could not wrap has no blob to carry: it cannot be archived.
      if (IsKeyClass(object.summary.object_class) && (object.summary.unwrappable || !object.summary.by_wrap)) {
        collected.left_out.push_back(DescribeObject(object.summary) + " on " + source.token->name());
        continue;
      }
      chosen.push_back({&source, std::move(object)});
    }
  }
  for (std::size_t i = 0; i < chosen.size(); ++i) {
    const Found& found = chosen[i];
    try {
      CopyPlan plan = PrepareCopy(*found.source->token, found.object.handle, found.source->domain_key);
      collected.records.push_back({found.object.summary.identity, std::move(plan)});
    } catch (const CopyError& e) {
      throw TransferError(DescribeObject(found.object.summary) + ": " + e.what(), e.rv());
    }
    if (progress) progress(i + 1, chosen.size());
  }
  return collected;
}

RestoreResult RestoreObjects(std::span<const ArchiveRecord> records, std::span<const ArchiveToken> targets,
                             const std::string& domain_label, const TransferProgress& progress) {
  std::vector<std::set<std::string>> held;
  for (const ArchiveToken& target : targets) held.push_back(IdentitiesOn(target, domain_label));

  RestoreResult result;
  std::vector<Created> created;
  std::size_t step = 0;
  const std::size_t total = records.size() * targets.size();
  for (const ArchiveRecord& record : records) {
    for (std::size_t t = 0; t < targets.size(); ++t) {
      const ArchiveToken& target = targets[t];
      if (progress) progress(++step, total);
      if (held[t].count(record.identity) != 0) {
        ++result.already_present;
        continue;
      }
      std::string what = "object " + IdentityHex(record.identity).substr(0, 16);
      try {
        CK_OBJECT_HANDLE handle = ApplyCopy(record.plan, *target.token, target.domain_key);
        ObjectSummary summary;
        CK_RV rv = ReadSummary(*target.token, handle, target.domain_key, domain_label, summary);
        if (rv == CKR_OK) what = DescribeObject(summary);
        created.push_back({&target, handle, what});
        if (rv != CKR_OK) throw TransferError(target.token->name() + ": reading the new " + what + " failed", rv);
        if (summary.identity != record.identity)
          throw TransferError(target.token->name() + ": the new " + what + " is not the archived object (identity " +
                                  IdentityHex(summary.identity).substr(0, 16) + ", archived " +
                                  IdentityHex(record.identity).substr(0, 16) + ")",
                              CKR_GENERAL_ERROR);
        held[t].insert(record.identity);
        ++result.created;
      } catch (const CopyError& e) {
        std::string remaining = RollBack(created);
        throw TransferError(what + ": " + e.what() +
                                (remaining.empty() ? "; every object this run made was removed again"
                                                   : "; these could not be removed: " + remaining),
                            e.rv());
      } catch (const TransferError& e) {
        std::string remaining = RollBack(created);
        throw TransferError(std::string(e.what()) +
                                (remaining.empty() ? "; every object this run made was removed again"
                                                   : "; these could not be removed: " + remaining),
                            e.rv());
      }
    }
  }
  return result;
}

}  // namespace p11ha::replication
