// SPDX-License-Identifier: Apache-2.0
#include "provider/core/object_catalog.h"

#include <algorithm>
#include <atomic>
#include <mutex>
#include <shared_mutex>

namespace p11ha {

std::optional<CK_OBJECT_HANDLE> ObjectPlaces::HandleOn(std::size_t member, std::uint64_t epoch) const {
  for (const MemberHandle& h : holders)
    if (h.member == member && h.epoch == epoch) return h.handle;
  return std::nullopt;
}

std::uint64_t ObjectPlaces::HolderMask(const std::vector<std::uint64_t>& epochs) const {
  std::uint64_t mask = 0;
  for (const MemberHandle& h : holders)
    if (h.member < epochs.size() && epochs[h.member] == h.epoch) mask |= std::uint64_t{1} << h.member;
  return mask;
}

std::optional<ObjectView> ObjectCatalog::Get(CK_OBJECT_HANDLE handle) const {
  std::shared_lock lock(mu_);
  auto it = entries_.find(handle);
  if (it == entries_.end()) return std::nullopt;
  return ObjectView{{handle, it->second.holders}, it->second.facts, it->second.owner};
}

std::optional<ObjectPlaces> ObjectCatalog::PlacesOfVisible(CK_OBJECT_HANDLE handle) const {
  std::shared_lock lock(mu_);
  auto it = entries_.find(handle);
  if (it == entries_.end() || it->second.facts.hidden) return std::nullopt;
  return ObjectPlaces{handle, it->second.holders};
}

std::optional<CK_OBJECT_HANDLE> ObjectCatalog::Lookup(std::size_t member, std::uint64_t epoch,
                                                      CK_OBJECT_HANDLE handle) const {
  std::shared_lock lock(mu_);
  auto it = by_member_.find(MemberKey{member, epoch, handle});
  if (it == by_member_.end()) return std::nullopt;
  return it->second.object;
}

void ObjectCatalog::AddHoldingLocked(const MemberHandle& where, CK_OBJECT_HANDLE object) {
  by_member_[MemberKey{where.member, where.epoch, where.handle}] = Holding{object, ++stamp_};
}

CK_OBJECT_HANDLE ObjectCatalog::Register(const MemberHandle& where, const ObjectFacts& facts,
                                         CK_SESSION_HANDLE owner, SearchKeys keys) {
  std::unique_lock lock(mu_);
  MemberKey key{where.member, where.epoch, where.handle};
  if (auto it = by_member_.find(key); it != by_member_.end()) return it->second.object;

  auto range = by_identity_.equal_range(facts.identity);
  for (auto it = range.first; it != range.second; ++it) {
    Entry& entry = entries_.at(it->second);
    if (entry.facts.token != facts.token) continue;
    auto mine = std::find_if(entry.holders.begin(), entry.holders.end(),
                             [&](const MemberHandle& h) { return h.member == where.member; });
    // A member holds an object once; a second handle with the same identity on the same member
    // is a different object (identities can collide when the material is not readable).
    if (mine != entry.holders.end() && mine->epoch == where.epoch) continue;
    if (mine != entry.holders.end()) {
      by_member_.erase(MemberKey{mine->member, mine->epoch, mine->handle});
      *mine = where;
    } else {
      entry.holders.push_back(where);
    }
    entry.keys = std::move(keys);
    AddHoldingLocked(where, it->second);
    return it->second;
  }

  static std::atomic<CK_OBJECT_HANDLE> next{1};
  CK_OBJECT_HANDLE handle = next.fetch_add(1, std::memory_order_relaxed);
  entries_.emplace(handle, Entry{facts, facts.token ? CK_INVALID_HANDLE : owner, {where}, std::move(keys)});
  AddHoldingLocked(where, handle);
  by_identity_.emplace(facts.identity, handle);
  return handle;
}

bool ObjectCatalog::HeldBefore(std::size_t member, std::uint64_t epoch) const {
  std::shared_lock lock(mu_);
  for (const auto& [handle, entry] : entries_)
    for (const MemberHandle& h : entry.holders)
      if (h.member == member && h.epoch < epoch && entry.facts.token) return true;
  return false;
}

void ObjectCatalog::AddHolder(CK_OBJECT_HANDLE handle, const MemberHandle& where) {
  std::unique_lock lock(mu_);
  auto it = entries_.find(handle);
  if (it == entries_.end()) return;
  auto& holders = it->second.holders;
  for (auto h = holders.begin(); h != holders.end(); ++h) {
    if (h->member != where.member) continue;
    by_member_.erase(MemberKey{h->member, h->epoch, h->handle});
    holders.erase(h);
    break;
  }
  holders.push_back(where);
  AddHoldingLocked(where, handle);
}

bool ObjectCatalog::SetLabelAndId(CK_OBJECT_HANDLE handle, const SearchKeys& read, const SearchTemplate& search) {
  std::unique_lock lock(mu_);
  auto it = entries_.find(handle);
  if (it == entries_.end()) return false;
  it->second.keys.label = read.label;
  it->second.keys.id = read.id;
  return search.Matches(it->second.facts, it->second.keys);
}

void ObjectCatalog::ApplySearchKeys(CK_OBJECT_HANDLE handle, std::span<const CK_ATTRIBUTE> attributes) {
  std::unique_lock lock(mu_);
  auto it = entries_.find(handle);
  if (it == entries_.end()) return;
  for (const CK_ATTRIBUTE& attribute : attributes) {
    if (attribute.pValue == nullptr && attribute.ulValueLen > 0) continue;
    const auto* bytes = static_cast<const CK_BYTE*>(attribute.pValue);
    const std::size_t size = attribute.pValue == nullptr ? 0 : attribute.ulValueLen;
    if (attribute.type == CKA_LABEL) it->second.keys.label = std::string(bytes, bytes + size);
    if (attribute.type == CKA_ID) it->second.keys.id = std::vector<CK_BYTE>(bytes, bytes + size);
  }
}

std::vector<CK_OBJECT_HANDLE> ObjectCatalog::Match(const SearchTemplate& search, const std::vector<std::uint64_t>& epochs,
                                                   std::uint64_t serving) const {
  std::vector<CK_OBJECT_HANDLE> found;
  std::shared_lock lock(mu_);
  for (const auto& [handle, entry] : entries_) {
    if (entry.facts.hidden || !search.Matches(entry.facts, entry.keys)) continue;
    bool held = std::any_of(entry.holders.begin(), entry.holders.end(), [&](const MemberHandle& h) {
      return h.member < epochs.size() && epochs[h.member] == h.epoch && (serving >> h.member & 1) != 0;
    });
    if (held) found.push_back(handle);
  }
  lock.unlock();
  std::sort(found.begin(), found.end());
  return found;
}

std::uint64_t ObjectCatalog::Stamp() const {
  std::shared_lock lock(mu_);
  return stamp_;
}

void ObjectCatalog::Prune(std::size_t member, std::uint64_t epoch, std::uint64_t stamp,
                          const std::unordered_set<CK_OBJECT_HANDLE>& listed) {
  std::unique_lock lock(mu_);
  std::vector<CK_OBJECT_HANDLE> gone;
  for (const auto& [key, holding] : by_member_)
    if (key.member == member && key.epoch == epoch && holding.stamp <= stamp && !listed.contains(key.handle))
      gone.push_back(holding.object);
  for (CK_OBJECT_HANDLE object : gone) RemoveHolderLocked(object, member);
}

void ObjectCatalog::EraseLocked(CK_OBJECT_HANDLE handle) {
  auto it = entries_.find(handle);
  if (it == entries_.end()) return;
  for (const MemberHandle& h : it->second.holders) by_member_.erase(MemberKey{h.member, h.epoch, h.handle});
  auto range = by_identity_.equal_range(it->second.facts.identity);
  for (auto id = range.first; id != range.second; ++id) {
    if (id->second == handle) {
      by_identity_.erase(id);
      break;
    }
  }
  entries_.erase(it);
}

void ObjectCatalog::Remove(CK_OBJECT_HANDLE handle) {
  std::unique_lock lock(mu_);
  EraseLocked(handle);
}

void ObjectCatalog::RemoveHolder(CK_OBJECT_HANDLE handle, std::size_t member) {
  std::unique_lock lock(mu_);
  RemoveHolderLocked(handle, member);
}

void ObjectCatalog::RemoveHolderLocked(CK_OBJECT_HANDLE handle, std::size_t member) {
  auto it = entries_.find(handle);
  if (it == entries_.end()) return;
  auto& holders = it->second.holders;
  for (auto h = holders.begin(); h != holders.end();) {
    if (h->member == member) {
      by_member_.erase(MemberKey{h->member, h->epoch, h->handle});
      h = holders.erase(h);
    } else {
      ++h;
    }
  }
  if (holders.empty()) EraseLocked(handle);
}

void ObjectCatalog::DropPrivate() {
  std::unique_lock lock(mu_);
  std::vector<CK_OBJECT_HANDLE> doomed;
  for (const auto& [handle, entry] : entries_)
    if (entry.facts.is_private) doomed.push_back(handle);
  for (CK_OBJECT_HANDLE handle : doomed) EraseLocked(handle);
}

void ObjectCatalog::DropOwnedBy(CK_SESSION_HANDLE owner) {
  std::unique_lock lock(mu_);
  std::vector<CK_OBJECT_HANDLE> doomed;
  for (const auto& [handle, entry] : entries_)
    if (!entry.facts.token && entry.owner == owner) doomed.push_back(handle);
  for (CK_OBJECT_HANDLE handle : doomed) EraseLocked(handle);
}

void ObjectCatalog::Clear() {
  std::unique_lock lock(mu_);
  entries_.clear();
  by_member_.clear();
  by_identity_.clear();
}

}  // namespace p11ha
