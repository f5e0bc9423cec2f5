// SPDX-License-Identifier: Apache-2.0
#include "provider/core/module.h"

#include <pthread.h>

#include <atomic>
#include <utility>

#include "provider/core/error.h"
#include "provider/core/log.h"
#include "provider/core/object_identity.h"

namespace p11ha {
namespace {

// Never destroyed: at process exit an application that did not call C_Finalize must not have
// p11ha finalise members whose own static state may already be gone.
std::atomic<std::shared_ptr<Module>>& Global() {
  static auto* module = new std::atomic<std::shared_ptr<Module>>();
  return *module;
}

// Bumped in every child of fork(). Module::Current runs on every application call, and getpid()
// is a system call each time (glibc stopped caching the pid); reading this costs nothing. The
// handler is registered with the first module, before any fork that could matter to it.
std::atomic<std::uint64_t> forks_seen{0};

std::uint64_t ForkGeneration() {
  static const bool registered = [] {
    pthread_atfork(nullptr, nullptr, [] { forks_seen.fetch_add(1, std::memory_order_relaxed); });
    return true;
  }();
  (void)registered;
  return forks_seen.load(std::memory_order_relaxed);
}

}  // namespace

Module::Module(config::Config config)
    : config_(std::move(config)),
      fork_generation_(ForkGeneration()),
      pool_(config_),
      catalog_freshness_(std::chrono::milliseconds(config_.catalog_max_age_ms)),
      refused_generation_(new std::atomic<std::uint64_t>[pool_.size()]()),
      domain_seats_(pool_.size()),
      awaiting_reconcile_(new std::atomic<bool>[pool_.size()]()),
      joining_(new std::atomic<bool>[pool_.size()]()),
      monitor_(pool_, std::chrono::milliseconds(config_.probe_interval_ms),
               [this](Member& member) { return OnMemberUp(member); }) {}

Module::~Module() { Stop(); }


void Module::Start(bool own_threads) {
  own_threads_ = own_threads;
  pool_.UseWorkers(own_threads);
  pool_.LoadAll();
  pool_.ConnectAll();
  for (std::size_t i = 0; i < pool_.size(); ++i)
    if (!pool_.at(i).up()) log::Get()->warn("member {} is down at start: {}", pool_.at(i).name(), pool_.at(i).Status().last_error);
  monitor_.Start(own_threads);
}

void Module::Stop() {
  if (std::exchange(stopped_, true)) return;
  monitor_.Stop();
  for (auto& session : sessions_.TakeAll()) {
    std::lock_guard lock(session->mutex());
    session->op.reset();
    session->CloseMemberSessions(pool_);
  }
  login_.Clear();
  catalog_.Clear();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(config_.call_timeout_ms);
  pool_.DisconnectAll();
  pool_.StopWorkers(deadline);
}

std::shared_ptr<Module> Module::Current() {
  auto module = Global().load(std::memory_order_acquire);
  // After fork() the child sees the parent's state but none of its threads or member
  // connections: it must initialise again (PKCS#11 §6.7.7).
  if (module && module->fork_generation_ != ForkGeneration()) return nullptr;
  return module;
}

void Module::Install(std::shared_ptr<Module> module) {
  auto previous = Global().exchange(std::move(module), std::memory_order_acq_rel);
  // A parent's module inherited through fork() owns threads that do not exist here; running
  // its destructor would join them. It is deliberately leaked.
  if (previous && previous->fork_generation_ != ForkGeneration()) new std::shared_ptr<Module>(std::move(previous));
}

std::shared_ptr<Module> Module::Uninstall() {
  auto module = Global().exchange(nullptr, std::memory_order_acq_rel);
  if (module && module->fork_generation_ != ForkGeneration()) {
    new std::shared_ptr<Module>(std::move(module));
    return nullptr;
  }
  return module;
}

void Module::CheckSlot(CK_SLOT_ID slot) const {
  if (slot != config_.slot_id) ThrowCk(CKR_SLOT_ID_INVALID, "no such slot");
}

std::shared_ptr<VirtualSession> Module::SessionOrThrow(CK_SESSION_HANDLE handle) const {
  auto session = sessions_.Get(handle);
  if (!session) ThrowCk(CKR_SESSION_HANDLE_INVALID, "no such session");
  return session;
}

ObjectView Module::ObjectOrThrow(CK_OBJECT_HANDLE handle, CK_RV not_found) const {
  auto object = catalog_.Get(handle);
  // p11ha's own objects (domain key, tombstones) are not the application's to use.
  if (!object || object->facts.hidden) ThrowCk(not_found, "no such object");
  return std::move(*object);
}

ObjectPlaces Module::PlacesOrThrow(CK_OBJECT_HANDLE handle, CK_RV not_found) const {
  auto places = catalog_.PlacesOfVisible(handle);
  if (!places) ThrowCk(not_found, "no such object");
  return std::move(*places);
}

std::vector<std::uint64_t> Module::Epochs() {
  std::vector<std::uint64_t> epochs(pool_.size());
  for (std::size_t i = 0; i < pool_.size(); ++i) epochs[i] = pool_.at(i).epoch();
  return epochs;
}

// Reads each member's epoch in place rather than through Epochs(): this runs before every
// operation on a key, and should not allocate.
std::uint64_t Module::HolderMask(const ObjectPlaces& object) {
  std::uint64_t mask = 0;
  for (const MemberHandle& holder : object.holders)
    if (holder.member < pool_.size() && pool_.at(holder.member).epoch() == holder.epoch)
      mask |= std::uint64_t{1} << holder.member;
  return mask;
}

Module::Route Module::RouteTo(VirtualSession& session, std::size_t index) {
  Member& member = pool_.at(index);
  Route route{&member, CK_INVALID_HANDLE};
  CK_RV rv = session.MemberSession(member, &route.session);
  if (rv != CKR_OK) ThrowCk(Outcome(member, "C_OpenSession", rv), "cannot open a member session");
  return route;
}

Module::Route Module::ObjectRouteTo(VirtualSession& session, std::size_t index) {
  Member& member = pool_.at(index);
  Route route{&member, CK_INVALID_HANDLE};
  CK_RV rv = session.ObjectSession(member, &route.session);
  if (rv != CKR_OK) ThrowCk(Outcome(member, "C_OpenSession", rv), "cannot open a member session");
  return route;
}

Module::Route Module::ObjectRouteOrThrow(VirtualSession& session, std::uint64_t allowed) {
  monitor_.Tick();
  auto index = pool_.Pick(allowed);
  if (!index) ThrowCk(CKR_DEVICE_ERROR, "no member is up");
  return ObjectRouteTo(session, *index);
}

Module::Route Module::RouteOrThrow(VirtualSession& session, std::uint64_t allowed) {
  monitor_.Tick();
  auto index = pool_.Pick(allowed);
  if (!index) ThrowCk(CKR_DEVICE_ERROR, "no member is up");
  return RouteTo(session, *index);
}

Module::Route Module::HomeRouteOrThrow(VirtualSession& session) {
  monitor_.Tick();
  std::vector<std::size_t> serving = pool_.Serving();
  if (serving.empty()) ThrowCk(CKR_DEVICE_ERROR, "no member is up");
  return ObjectRouteTo(session, serving.front());
}

CK_RV Module::Outcome(Member& member, const char* function, CK_RV rv) {
  if (!IsDeviceClass(rv)) return rv;
  // One failure is counted once: calls already under way on a member that went down (or that
  // timed out, which took it down) fail too.
  if (member.up()) member.MarkDown(std::string(function) + " returned " + RvName(rv));
  monitor_.Wake();
  return CKR_DEVICE_ERROR;
}

void Module::TakeDownRefuser(Member& member, const char* function) {
  if (!member.up()) return;  // a copy refused earlier in the same creation already did
  log::Get()->error("member {}: {} returned CKR_GENERAL_ERROR and made nothing, where another member made the object: "
                    "its object store takes no new objects, so it is down until a probe finds its token whole",
                    member.name(), function);
  member.MarkDown(std::string(function) + " returned CKR_GENERAL_ERROR where another member did not");
  monitor_.Wake();
}

CK_OBJECT_HANDLE Module::Adopt(const Route& route, CK_OBJECT_HANDLE member_handle, CK_SESSION_HANDLE owner) {
  // The handle belongs to the instance the caller pinned, which may be gone by now.
  const std::uint64_t epoch = PinnedEpoch::Of(route.member, route.member->epoch());
  if (auto known = catalog_.Lookup(route.member->index(), epoch, member_handle)) return *known;
  ObjectFacts facts;
  SearchKeys keys;
  CK_RV rv = ReadObjectFacts(*route.member, route.session, member_handle, DomainKeyOn(*route.member),
                             config_.domain_key_label, &facts, &keys);
  if (rv != CKR_OK) ThrowCk(Outcome(*route.member, "C_GetAttributeValue", rv), "cannot read the object's identity");
  return catalog_.Register(MemberHandle{route.member->index(), epoch, member_handle}, facts, owner, std::move(keys));
}

CK_OBJECT_HANDLE Module::MemberObject(const ObjectView& object, const Route& route, CK_RV not_held) {
  auto handle = object.HandleOn(route.member->index(), route.member->epoch());
  if (!handle) ThrowCk(not_held, "the member does not hold the object");
  return *handle;
}

bool Module::OnMemberUp(Member& member) {
  std::uint64_t generation = login_.generation();
  if (auto credentials = login_.Credentials()) {
    auto& refused = refused_generation_[member.index()];
    // generation + 1 so that the zero-initialised value never matches.
    if (refused.load(std::memory_order_acquire) == generation + 1) {
      member.Disconnect();
      return false;
    }
    CK_RV rv = member.Login(credentials->first, credentials->second);
    if (rv != CKR_OK) {
      const bool verdict = !IsDeviceClass(rv) && !LoginNotAVerdict(rv);
      if (verdict) refused.store(generation + 1, std::memory_order_release);
      member.MarkDown(std::string("login refused: ") + RvName(rv) +
                      (verdict ? "; waiting for the next login" : "; retrying at the next probe"));
      member.Disconnect();
      return false;
    }
    if (credentials->first != CKU_USER) {
      // The security officer sees no private objects: the user's next login reconciles.
      awaiting_reconcile_[member.index()].store(true, std::memory_order_release);
    } else {
      // Joining until it serves, not just while reconciled: an object born or deleted between
      // the end of the reconciliation and Activate would otherwise pass it by.
      StartJoining(member.index());
      if (!ReconcileWith(member)) {
        EndJoining(member.index());
        member.MarkDown("reconciliation before serving failed; retrying");
        member.Disconnect();
        return false;
      }
    }
  } else {
    log::Get()->info("member {} is back; it is reconciled at the next login", member.name());
    awaiting_reconcile_[member.index()].store(true, std::memory_order_release);
  }
  RemapObjects(member);
  member.Activate();
  EndJoining(member.index());
  return true;
}

void Module::LogoutMembers() {
  init_memory_.Forget();  // private keys' starts are refused from now on
  for (std::size_t i = 0; i < pool_.size(); ++i) {
    Member& member = pool_.at(i);
    if (member.up()) Outcome(member, "C_Logout", member.Logout());
  }
  catalog_.DropPrivate();
}

}  // namespace p11ha
