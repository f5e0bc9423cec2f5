// SPDX-License-Identifier: Apache-2.0
#include "provider/core/virtual_session.h"

#include <atomic>
#include <mutex>
#include <shared_mutex>

namespace p11ha {

CK_RV VirtualSession::Open(Member& member, CK_SESSION_HANDLE* out) {
  CK_FLAGS flags = CKF_SERIAL_SESSION | (flags_ & CKF_RW_SESSION);
  return member.Call("C_OpenSession", CallKind::kParallel, &CK_FUNCTION_LIST::C_OpenSession, member.slot(), flags,
                     CK_VOID_PTR{nullptr}, CK_NOTIFY{nullptr}, out);
}

VirtualSession::Opened& VirtualSession::Slot(Member& member) {
  Opened& opened = member_sessions_[member.index()];
  // Sessions of an earlier epoch died with the member instance that issued them.
  if (opened.epoch != member.epoch()) opened = Opened{member.epoch()};
  return opened;
}

CK_RV VirtualSession::MemberSession(Member& member, CK_SESSION_HANDLE* out) {
  Opened& opened = Slot(member);
  if (opened.work == CK_INVALID_HANDLE) {
    if (CK_RV rv = Open(member, &opened.work); rv != CKR_OK) return rv;
  }
  *out = opened.work;
  return CKR_OK;
}

CK_RV VirtualSession::ObjectSession(Member& member, CK_SESSION_HANDLE* out) {
  Opened& opened = Slot(member);
  if (opened.objects == CK_INVALID_HANDLE) {
    if (CK_RV rv = Open(member, &opened.objects); rv != CKR_OK) return rv;
  }
  *out = opened.objects;
  return CKR_OK;
}

void VirtualSession::DiscardMemberSession(Member& member) {
  auto it = member_sessions_.find(member.index());
  if (it == member_sessions_.end() || it->second.work == CK_INVALID_HANDLE) return;
  // Pinned: after a restart the same number may be another session (p11ha's control session,
  // whose closing would log the member out).
  PinnedEpoch pin(&member, it->second.epoch);
  member.Call("C_CloseSession", CallKind::kParallel, &CK_FUNCTION_LIST::C_CloseSession, it->second.work);
  it->second.work = CK_INVALID_HANDLE;
}

void VirtualSession::CloseMemberSessions(MemberPool& pool) {
  for (const auto& [index, opened] : member_sessions_) {
    Member& member = pool.at(index);
    if (!member.up()) continue;
    PinnedEpoch pin(&member, opened.epoch);  // as in DiscardMemberSession
    for (CK_SESSION_HANDLE handle : {opened.work, opened.objects})
      if (handle != CK_INVALID_HANDLE)
        member.Call("C_CloseSession", CallKind::kParallel, &CK_FUNCTION_LIST::C_CloseSession, handle);
  }
  member_sessions_.clear();
}

std::shared_ptr<VirtualSession> SessionTable::Open(CK_FLAGS flags) {
  static std::atomic<CK_SESSION_HANDLE> next{1};
  CK_SESSION_HANDLE handle = next.fetch_add(1, std::memory_order_relaxed);
  std::unique_lock lock(mu_);
  auto session = std::make_shared<VirtualSession>(handle, flags);
  sessions_.emplace(handle, session);
  return session;
}

std::shared_ptr<VirtualSession> SessionTable::Get(CK_SESSION_HANDLE handle) const {
  std::shared_lock lock(mu_);
  auto it = sessions_.find(handle);
  return it == sessions_.end() ? nullptr : it->second;
}

std::shared_ptr<VirtualSession> SessionTable::Take(CK_SESSION_HANDLE handle) {
  std::unique_lock lock(mu_);
  auto it = sessions_.find(handle);
  if (it == sessions_.end()) return nullptr;
  auto session = std::move(it->second);
  sessions_.erase(it);
  return session;
}

std::vector<std::shared_ptr<VirtualSession>> SessionTable::TakeAll() {
  std::unique_lock lock(mu_);
  std::vector<std::shared_ptr<VirtualSession>> all;
  for (auto& [handle, session] : sessions_) all.push_back(std::move(session));
  sessions_.clear();
  return all;
}

std::size_t SessionTable::Count() const {
  std::shared_lock lock(mu_);
  return sessions_.size();
}

std::size_t SessionTable::ReadWriteCount() const {
  std::shared_lock lock(mu_);
  std::size_t n = 0;
  for (const auto& [handle, session] : sessions_) n += session->read_write() ? 1 : 0;
  return n;
}

bool SessionTable::AnyReadOnly() const {
  std::shared_lock lock(mu_);
  for (const auto& [handle, session] : sessions_)
    if (!session->read_write()) return true;
  return false;
}

}  // namespace p11ha
