// SPDX-License-Identifier: Apache-2.0
// Finds answered from p11ha's catalog (catalog_search.h has the rule; README "Finding objects").
#include <unordered_set>

#include "provider/core/error.h"
#include "provider/core/module.h"
#include "provider/core/object_identity.h"

namespace p11ha {
namespace {

CatalogFreshness::Serving ServingView(MemberPool& pool, const std::vector<std::size_t>& serving) {
  CatalogFreshness::Serving view;
  view.reserve(serving.size());
  for (std::size_t index : serving) view.emplace_back(index, pool.at(index).epoch());
  return view;
}

}  // namespace

std::optional<std::vector<CK_OBJECT_HANDLE>> Module::FindInCatalog(VirtualSession& session,
                                                                   const std::vector<std::size_t>& serving,
                                                                   const SearchTemplate& search) {
  if (!catalog_freshness_.enabled()) return std::nullopt;
  const std::uint64_t generation = login_.generation();
  const CatalogFreshness::Serving view = ServingView(pool_, serving);
  bool listed_now = false;
  if (!catalog_freshness_.Fresh(view, generation)) {
    // Another thread is listing: this find asks the members rather than wait for it.
    if (!catalog_freshness_.BeginListing()) return std::nullopt;
    const auto began = CatalogFreshness::Clock::now();
    bool complete = false;
    try {
      complete = ListMembers(session, serving);
    } catch (...) {
      catalog_freshness_.EndListing(false, {}, 0, began);
      throw;
    }
    // A login, a logout or a member coming or going meanwhile changed what a listing shows.
    complete = complete && login_.generation() == generation && ServingView(pool_, pool_.Serving()) == view;
    catalog_freshness_.EndListing(complete, view, generation, began);
    if (!complete) return std::nullopt;
    listed_now = true;
  }
  std::uint64_t mask = 0;
  for (std::size_t index : serving) mask |= std::uint64_t{1} << index;
  std::vector<CK_OBJECT_HANDLE> found = catalog_.Match(search, Epochs(), mask);
  if (search.NamesChangeable() && !found.empty()) {
    auto confirmed = ConfirmNames(session, found, search);
    if (!confirmed) return std::nullopt;
    found = std::move(*confirmed);
  }
  // Nothing matched: another process may have made the object, or given an object this name,
  // since the listing; and an application that looks for a name usually looks for something
  // that exists.
  if (found.empty() && !listed_now) return std::nullopt;
  return found;
}

std::optional<std::vector<CK_OBJECT_HANDLE>> Module::ConfirmNames(VirtualSession& session,
                                                                  const std::vector<CK_OBJECT_HANDLE>& hits,
                                                                  const SearchTemplate& search) {
  std::vector<CK_OBJECT_HANDLE> confirmed;
  const std::vector<std::uint64_t> epochs = Epochs();
  for (CK_OBJECT_HANDLE hit : hits) {
    std::optional<ObjectView> object = catalog_.Get(hit);
    if (!object) continue;  // destroyed by this process meanwhile
    std::vector<std::size_t> holders = pool_.Serving(object->HolderMask(epochs));
    if (holders.empty()) continue;
    Member& member = pool_.at(holders.front());
    PinnedEpoch pin(&member, epochs[member.index()]);
    std::optional<CK_OBJECT_HANDLE> member_handle = object->HandleOn(member.index(), epochs[member.index()]);
    CK_SESSION_HANDLE member_session = CK_INVALID_HANDLE;
    CK_RV rv = session.MemberSession(member, &member_session);
    SearchKeys read;
    if (rv == CKR_OK && member_handle) rv = ReadSearchKeys(member, member_session, *member_handle, &read);
    if (rv == CKR_OBJECT_HANDLE_INVALID) {
      // Destroyed by another process since the listing.
      catalog_.RemoveHolder(hit, member.index());
      continue;
    }
    if (rv != CKR_OK) {
      Outcome(member, "C_GetAttributeValue", rv);
      return std::nullopt;
    }
    if (catalog_.SetLabelAndId(hit, read, search)) confirmed.push_back(hit);
  }
  return confirmed;
}

bool Module::ListMembers(VirtualSession& session, const std::vector<std::size_t>& serving) {
  for (std::size_t index : serving)
    if (!ListMember(session, pool_.at(index))) return false;
  return true;
}

bool Module::ListMember(VirtualSession& session, Member& member) {
  const std::uint64_t epoch = member.epoch();
  PinnedEpoch pin(&member, epoch);
  const std::uint64_t stamp = catalog_.Stamp();
  Route route{&member, CK_INVALID_HANDLE};
  std::vector<CK_OBJECT_HANDLE> found;
  CK_RV rv = SearchMember(session, member, {}, route, found);
  if (rv != CKR_OK) {
    Outcome(member, "C_FindObjects", rv);
    return false;
  }
  std::unordered_set<CK_OBJECT_HANDLE> listed(found.begin(), found.end());
  for (CK_OBJECT_HANDLE member_handle : found) {
    // Known objects are not read again: what can change in them (CKA_LABEL, CKA_ID) is checked
    // when a find names it (ConfirmNames).
    if (catalog_.Lookup(member.index(), epoch, member_handle)) continue;
    CK_OBJECT_HANDLE adopted = CK_INVALID_HANDLE;
    switch (AdoptFound(route, member_handle, adopted)) {
      case Adoption::kAdopted: break;
      case Adoption::kGone: listed.erase(member_handle); break;
      case Adoption::kMemberFailed: return false;
    }
  }
  catalog_.Prune(member.index(), epoch, stamp, listed);
  return true;
}

}  // namespace p11ha
