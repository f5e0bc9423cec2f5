// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <p11-kit/pkcs11.h>

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "config/config.h"
#include "provider/core/catalog_search.h"
#include "provider/core/creation.h"
#include "provider/core/init_memory.h"
#include "provider/core/login_state.h"
#include "provider/core/object_catalog.h"
#include "provider/core/virtual_session.h"
#include "provider/member/health_monitor.h"
#include "provider/member/member_pool.h"
#include "replication/check_value.h"
#include "replication/key_birth.h"
#include "replication/object_identity.h"

namespace p11ha {

// One run of p11ha, from C_Initialize to C_Finalize: the config, the members, the one virtual
// slot with its sessions, login and object catalog. The only global is the current Module.
//
// Lock order (never held across a member call, except a member's own store lock):
//   VirtualSession::mutex  →  SessionTable / ObjectCatalog / LoginState (leaf locks).
class Module {
 public:
  explicit Module(config::Config config);
  ~Module();
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // Loads every member module (failure throws: C_Initialize fails) and connects the reachable.
  // `own_threads` is false when the application forbids library threads.
  void Start(bool own_threads);
  void Stop();

  // The module of this run, or null before C_Initialize, after C_Finalize and in a forked child.
  static std::shared_ptr<Module> Current();
  // p11ha's answers between its own parts (kNotHere, kQuorumLost, kStaleRoute); to an
  // application they mean that no member could do it.
  static bool InternalAnswer(CK_RV rv) {
    return rv == kNotHere || rv == kQuorumLost || rv == kStaleRoute || rv == kCreationRefused;
  }
  static void Install(std::shared_ptr<Module> module);
  static std::shared_ptr<Module> Uninstall();

  const config::Config& config() const { return config_; }
  MemberPool& pool() { return pool_; }

  // Slot and token (slot_token.cpp).
  CK_RV GetSlotList(CK_BBOOL token_present, CK_SLOT_ID_PTR list, CK_ULONG_PTR count);
  void GetSlotInfo(CK_SLOT_ID slot, CK_SLOT_INFO* info);
  void GetTokenInfo(CK_SLOT_ID slot, CK_TOKEN_INFO* info);
  CK_RV GetMechanismList(CK_SLOT_ID slot, CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR count);
  void GetMechanismInfo(CK_SLOT_ID slot, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO* info);
  CK_RV InitPin(CK_SESSION_HANDLE session, std::span<const CK_UTF8CHAR> pin);
  CK_RV SetPin(CK_SESSION_HANDLE session, std::span<const CK_UTF8CHAR> old_pin, std::span<const CK_UTF8CHAR> new_pin);

  // Sessions and login (sessions.cpp).
  CK_SESSION_HANDLE OpenSession(CK_SLOT_ID slot, CK_FLAGS flags);
  void CloseSession(CK_SESSION_HANDLE session);
  void CloseAllSessions(CK_SLOT_ID slot);
  void GetSessionInfo(CK_SESSION_HANDLE session, CK_SESSION_INFO* info);
  CK_RV Login(CK_SESSION_HANDLE session, CK_USER_TYPE user, std::span<const CK_UTF8CHAR> pin);
  CK_RV Logout(CK_SESSION_HANDLE session);

  // Objects (objects.cpp, find.cpp).
  CK_RV CreateObject(CK_SESSION_HANDLE session, CK_ATTRIBUTE_PTR attrs, CK_ULONG count, CK_OBJECT_HANDLE_PTR out);
  CK_RV CopyObject(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object, CK_ATTRIBUTE_PTR attrs, CK_ULONG count,
                   CK_OBJECT_HANDLE_PTR out);
  CK_RV DestroyObject(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object);
  CK_RV GetObjectSize(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object, CK_ULONG_PTR size);
  CK_RV GetAttributeValue(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object, CK_ATTRIBUTE_PTR attrs,
                          CK_ULONG count);
  CK_RV SetAttributeValue(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object, CK_ATTRIBUTE_PTR attrs,
                          CK_ULONG count);
  CK_RV FindObjectsInit(CK_SESSION_HANDLE session, CK_ATTRIBUTE_PTR attrs, CK_ULONG count);
  CK_RV FindObjects(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE_PTR out, CK_ULONG max, CK_ULONG_PTR count);
  CK_RV FindObjectsFinal(CK_SESSION_HANDLE session);

  // Operations from Init to Final (operations.cpp). `call` runs the member's function on the
  // member session that holds the operation. `fed` is the input a step hands the operation
  // (an Update's part), kept for a replay once the member has taken it; `output` is the step's
  // output buffer (null: a length query).
  CK_RV OpInit(CK_SESSION_HANDLE session, OpKind kind, CK_MECHANISM_PTR mechanism, CK_OBJECT_HANDLE key);
  template <typename Call>
  CK_RV OpStep(CK_SESSION_HANDLE session, OpKind kind, bool finishing, const void* output,
               std::span<const CK_BYTE> fed, Call&& call);
  CK_RV DigestKey(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE key);

  // Keys and random (keys.cpp).
  CK_RV GenerateKey(CK_SESSION_HANDLE session, CK_MECHANISM_PTR mechanism, CK_ATTRIBUTE_PTR attrs,
                    CK_ULONG count, CK_OBJECT_HANDLE_PTR out);
  CK_RV GenerateKeyPair(CK_SESSION_HANDLE session, CK_MECHANISM_PTR mechanism, CK_ATTRIBUTE_PTR pub,
                        CK_ULONG pub_count, CK_ATTRIBUTE_PTR priv, CK_ULONG priv_count, CK_OBJECT_HANDLE_PTR pub_out,
                        CK_OBJECT_HANDLE_PTR priv_out);
  CK_RV WrapKey(CK_SESSION_HANDLE session, CK_MECHANISM_PTR mechanism, CK_OBJECT_HANDLE wrapping,
                CK_OBJECT_HANDLE key, CK_BYTE_PTR out, CK_ULONG_PTR out_len);
  CK_RV UnwrapKey(CK_SESSION_HANDLE session, CK_MECHANISM_PTR mechanism, CK_OBJECT_HANDLE unwrapping,
                  CK_BYTE_PTR wrapped, CK_ULONG wrapped_len, CK_ATTRIBUTE_PTR attrs, CK_ULONG count,
                  CK_OBJECT_HANDLE_PTR out);
  CK_RV DeriveKey(CK_SESSION_HANDLE session, CK_MECHANISM_PTR mechanism, CK_OBJECT_HANDLE base,
                  CK_ATTRIBUTE_PTR attrs, CK_ULONG count, CK_OBJECT_HANDLE_PTR out);
  CK_RV SeedRandom(CK_SESSION_HANDLE session, CK_BYTE_PTR seed, CK_ULONG len);
  CK_RV GenerateRandom(CK_SESSION_HANDLE session, CK_BYTE_PTR out, CK_ULONG len);

  // True when every member that could serve offers the PKCS#11 3.0 interface.
  bool AllMembersSupportV3() const { return false; }

 private:
  // A member chosen for a request and the virtual session's session on it.
  struct Route {
    Member* member;
    CK_SESSION_HANDLE session;
  };

  // An attempt's answer meaning "this member does not hold what the request needs": the next
  // member is tried and this one is not blamed.
  static constexpr CK_RV kNotHere = CKR_VENDOR_DEFINED | 0x0FA11;
  // Replicate()'s answer when too few members took a new object: the application hears
  // CKR_DEVICE_ERROR, but the member that made it did not fail and is not taken down.
  static constexpr CK_RV kQuorumLost = CKR_VENDOR_DEFINED | 0x0FA12;
  // Replicate()'s answer when the member's own creation call said CKR_GENERAL_ERROR and made
  // nothing. Failover tries the next member; if that one makes the object, the first is taken
  // down, as its object store refuses what another member accepts (SoftHSM 2.6.1 loses a token
  // that way, README "Behaviour notes"). If no member makes it, the application hears
  // CKR_GENERAL_ERROR and no member is blamed: the request itself was at fault.
  static constexpr CK_RV kCreationRefused = CKR_VENDOR_DEFINED | 0x0FA14;
  enum class Choice { kBalanced, kFirst };  // by the balancing policy, or priority order
  enum class SessionUse { kWork, kObjects };  // the member session for operations, or for new objects

  // Runs `attempt(route)` on a serving member among `allowed`, and again on another one each
  // time the member fails (a device-class answer, or none within call_timeout_ms): that member
  // is taken down and the application never hears of it. CKR_DEVICE_ERROR only when no member
  // among `allowed` is left (failover_inl.h).
  template <typename Attempt>
  CK_RV Failover(VirtualSession& session, std::uint64_t allowed, const char* function, Attempt&& attempt,
                 Choice choice = Choice::kBalanced, SessionUse use = SessionUse::kWork);
  // Starts the session's operation again on another member: init with the kept mechanism,
  // then the input fed so far, whose output the application already has. CKR_DEVICE_ERROR
  // (logged with the reason) when the operation cannot move.
  CK_RV MoveOperation(VirtualSession& session, CryptoOp& op);
  // Sends the member a start that was held back for the first step (C_Login of CKU_CONTEXT_SPECIFIC
  // needs the operation on the member). The answer is the member's.
  CK_RV SendPendingStart(CryptoOp& op);
  static std::optional<Member::PendingInit> PendingStartOf(const CryptoOp& op);
  // The member's handle of `object` in its current epoch, or CK_INVALID_HANDLE.
  static CK_OBJECT_HANDLE Held(const ObjectPlaces& object, const Route& route);

  std::shared_ptr<VirtualSession> SessionOrThrow(CK_SESSION_HANDLE handle) const;
  ObjectView ObjectOrThrow(CK_OBJECT_HANDLE handle, CK_RV not_found) const;
  ObjectPlaces PlacesOrThrow(CK_OBJECT_HANDLE handle, CK_RV not_found) const;
  std::vector<std::uint64_t> Epochs();
  std::uint64_t HolderMask(const ObjectPlaces& object);
  // Picks a serving member among `allowed` and opens the session's member session on it.
  Route RouteOrThrow(VirtualSession& session, std::uint64_t allowed);
  Route RouteTo(VirtualSession& session, std::size_t member);
  // The same, on the session that creates objects (see VirtualSession::ObjectSession).
  Route ObjectRouteTo(VirtualSession& session, std::size_t member);
  Route ObjectRouteOrThrow(VirtualSession& session, std::uint64_t allowed);
  // New objects are born on the first serving member in priority order, so that every object
  // an application makes can be used together (wrap, derive) before replication copies it.
  Route HomeRouteOrThrow(VirtualSession& session);
  // Turns a member's answer into the application's: a device-class error marks the member
  // down and becomes CKR_DEVICE_ERROR.
  CK_RV Outcome(Member& member, const char* function, CK_RV rv);
  // `member` answered CKR_GENERAL_ERROR to a creation, or to the copy of a new object, that
  // another member performed: it is taken down (kCreationRefused).
  void TakeDownRefuser(Member& member, const char* function);
  // Registers an object a member just created or found, reading its identity.
  CK_OBJECT_HANDLE Adopt(const Route& route, CK_OBJECT_HANDLE member_handle, CK_SESSION_HANDLE owner);
  CK_OBJECT_HANDLE MemberObject(const ObjectView& object, const Route& route, CK_RV not_held);

  // Finds (find.cpp, catalog_listing.cpp). One whole search on one member, on the session's
  // member session (`route` receives it).
  CK_RV SearchMember(VirtualSession& session, Member& member, std::span<CK_ATTRIBUTE> match, Route& route,
                     std::vector<CK_OBJECT_HANDLE>& found);
  enum class Adoption { kAdopted, kGone, kMemberFailed };
  // Adopt for an object a search found, which may have been destroyed since.
  Adoption AdoptFound(const Route& route, CK_OBJECT_HANDLE member_handle, CK_OBJECT_HANDLE& adopted);
  // The catalog's answer to a find, listing the members first when the last listing is stale
  // (CatalogFreshness); nullopt when the members must answer: no fresh listing, or nothing
  // matched (another process may have made it since).
  std::optional<std::vector<CK_OBJECT_HANDLE>> FindInCatalog(VirtualSession& session,
                                                             const std::vector<std::size_t>& serving,
                                                             const SearchTemplate& search);
  // Lists every object of every serving member into the catalog: new ones adopted, ones no
  // longer there dropped. False when a member failed.
  bool ListMembers(VirtualSession& session, const std::vector<std::size_t>& serving);
  bool ListMember(VirtualSession& session, Member& member);
  // Of `hits`, those whose CKA_LABEL and CKA_ID, read again on a member that holds them, still
  // match `search` (another process may have changed them); nullopt when a member failed.
  std::optional<std::vector<CK_OBJECT_HANDLE>> ConfirmNames(VirtualSession& session,
                                                            const std::vector<CK_OBJECT_HANDLE>& hits,
                                                            const SearchTemplate& search);
  bool OnMemberUp(Member& member);
  // After a member came back in a new epoch: maps the objects this process knows to the
  // member's new handles (by identity), so that virtual handles keep working (rejoin.cpp).
  void RemapObjects(Member& member);
  void MoveFreshDigestToHolder(CK_SESSION_HANDLE session, const std::optional<ObjectView>& key);
  void LogoutMembers();
  void CheckSlot(CK_SLOT_ID slot) const;

  // Replication (replication.cpp, key_birth_checks.cpp).
  // The member's domain key, found once per connection and login; CK_INVALID_HANDLE when it
  // has none or nobody is logged in. `check` receives its check value.
  CK_OBJECT_HANDLE DomainKeyOn(Member& member, replication::CheckValue* check = nullptr);
  // Of `members`, those whose domain key agrees with the majority's (a bitmask by index).
  std::uint64_t DomainAgreement(const std::vector<std::size_t>& members);
  // How many members must hold a new object (replication.quorum).
  std::size_t QuorumSize() const;
  // Refuses token keys in a cluster without a domain key (CKR_FUNCTION_FAILED, logged).
  CK_RV CheckKeyCreation(Member& home, const char* function);
  // Refuses templates that name p11ha's own objects (the domain key's label, tombstones).
  CK_RV CheckReservedNames(std::span<const CK_ATTRIBUTE> attributes) const;
  // Creates `out.size()` objects on `home` with `create` (the creation's answer when it fails),
  // copies the token objects to every other up member, then registers them (virtual handles in
  // `out`). The creation and the reads that prepare the copies are one member call. Below quorum
  // every copy and the originals are destroyed and the answer is kQuorumLost.
  CK_RV Replicate(const Route& home, const char* function, Creation create, replication::BirthVerdict verdict,
                  VirtualSession& owner, std::span<CK_OBJECT_HANDLE> out);
  // Session objects live on as long as one member holding them does: each is copied, as a
  // session object of the same virtual session, to every other up member that shares the
  // domain. Best effort: a missed copy only narrows where the object can be used.
  void CopySessionObjects(VirtualSession& owner, const Route& home, std::span<const CK_OBJECT_HANDLE> made,
                          std::span<const ObjectFacts> facts, std::span<const CK_OBJECT_HANDLE> virtual_handles);
  // Removes what a failed creation made on `home`; `facts`, as far as they were read, name
  // what could not be removed (RememberOrphan).
  void DestroyMade(const Route& home, std::span<const CK_OBJECT_HANDLE> made, std::span<const ObjectFacts> facts);
  // The members in `mask` that are up: serving ones first (in the order that decides), then
  // standby members, which hold copies too.
  std::vector<std::size_t> UpHolders(std::uint64_t mask);
  // Copies on up or joining members outside `reached` (made by a rejoin's reconciliation, a
  // fan-out to a joining member, or another process): found by identity and destroyed; adds
  // to `reached`.
  void DestroyUnlistedCopies(VirtualSession& session, const ObjectView& object, std::vector<std::size_t>& reached);
  // A deletion that missed a down member leaves tombstones on the members it reached.
  void LeaveTombstones(VirtualSession& session, const ObjectView& object, const std::vector<std::size_t>& reached);
  // The template a key is made with, or the refusal (CKR_ATTRIBUTE_VALUE_INVALID, logged).
  CK_RV BirthOf(std::span<const CK_ATTRIBUTE> requested, bool token, replication::BirthCall call,
                const char* function, replication::Birth& birth) const;

  // Reconciles the cluster with a member that came back (logged in, not yet serving); false
  // when reconciliation could not run (rejoin.cpp).
  bool ReconcileWith(Member& returning);
  // From the start of its reconciliation until it serves, a returning member is "joining":
  // the fan-out of objects born meanwhile copies to it too, because the reconciliation may have looked before they existed. Whichever of
  // the two claims an object's copy to it first makes that copy, so it is made once. Fan-outs
  // under way when a member starts joining are waited for (they did not see it join).
  bool Joining(std::size_t member) const { return joining_[member].load(std::memory_order_acquire); }
  bool ClaimCopy(std::size_t member, const std::string& identity);
  void StartJoining(std::size_t member);
  void EndJoining(std::size_t member);
  // Brackets a fan-out or a deletion, so that StartJoining can wait for the ones that began
  // before it: their copies or tombstones must be there when the reconciliation looks.
  std::uint64_t EnterFanOut();
  void LeaveFanOut(std::uint64_t era);
  class ReplicationWrite {
   public:
    explicit ReplicationWrite(Module& module) : module_(module), era_(module.EnterFanOut()) {}
    ~ReplicationWrite() { module_.LeaveFanOut(era_); }
    ReplicationWrite(const ReplicationWrite&) = delete;
    ReplicationWrite& operator=(const ReplicationWrite&) = delete;

   private:
    Module& module_;
    const std::uint64_t era_;
  };
  // A failed creation whose object could not be removed from its home member (which failed
  // meanwhile) leaves an orphan there; the application got its key from another member. Known
  // by identity, it is destroyed on that member when it rejoins (rejoin.cpp).
  void RememberOrphan(std::size_t member, const std::string& identity);
  // A creation on `home` that failed with a device-class answer (a timeout among them) may have
  // made its objects with nothing to tell p11ha their handles: the member's rejoin looks for
  // them by `names` (token objects only). Returns `rv`.
  CK_RV CreationFailed(const Route& home, CK_RV rv, std::span<const replication::OrphanName> names);
  // An application's deletion of a token object while members are joining: a copy their
  // reconciliation makes of it afterwards is removed again (KeepCopy), and none is claimed.
  void NoteDeletion(const std::string& identity);
  bool KeepCopy(std::size_t member, const std::string& identity);

  struct DomainSeat {
    bool known = false;
    std::uint64_t epoch = 0;
    std::uint64_t generation = 0;
    CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
    replication::CheckValue check{};
  };

  const config::Config config_;
  const std::uint64_t fork_generation_;  // forks seen when it was made: a child must not use it
  MemberPool pool_;
  SessionTable sessions_;
  ObjectCatalog catalog_;
  CatalogFreshness catalog_freshness_;
  InitMemory init_memory_;
  LoginState login_;
  // Per member, the login generation in which it refused the kept PIN: it is not offered the
  // same PIN again (a real HSM counts failures and locks), only the next login's.
  std::unique_ptr<std::atomic<std::uint64_t>[]> refused_generation_;
  // False when the application forbids library threads (CKF_LIBRARY_CANT_CREATE_OS_THREADS):
  // replication then copies to one member after another on the caller's thread.
  bool own_threads_ = true;
  std::mutex domain_mu_;  // guards domain_seats_; never held across a member call
  std::vector<DomainSeat> domain_seats_;
  // Members that came back while nobody was logged in: reconciled at the next C_Login.
  std::unique_ptr<std::atomic<bool>[]> awaiting_reconcile_;
  std::unique_ptr<std::atomic<bool>[]> joining_;
  // Guards what follows; never held across a member call.
  std::mutex joining_mu_;
  std::condition_variable fan_outs_done_;
  std::set<std::pair<std::size_t, std::string>> copy_claims_;  // (joining member, identity)
  std::uint64_t fan_out_era_ = 0;                              // bumped when a member starts joining
  std::map<std::uint64_t, int> fan_outs_;                      // fan-outs under way, by the era they began in
  std::map<std::size_t, std::set<std::string>> orphans_;       // member -> identities to destroy at its rejoin
  std::map<std::size_t, std::vector<replication::OrphanName>> orphan_names_;  // member -> to look for at its rejoin
  std::set<std::pair<std::size_t, std::string>> deleted_while_joining_;      // (joining member, identity)
  HealthMonitor monitor_;
  bool stopped_ = false;  // Stop() runs once: C_Finalize, then again from the destructor
};

}  // namespace p11ha

#include "provider/core/failover_inl.h"
#include "provider/core/operations_inl.h"
