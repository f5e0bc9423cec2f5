// SPDX-License-Identifier: Apache-2.0
#include "provider/member/member.h"

#include <dirent.h>
#include <p11-kit/p11-kit.h>
#include <p11-kit/uri.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "provider/core/error.h"
#include "provider/core/log.h"
#include "provider/member/application_call.h"

namespace p11ha {
namespace {

constexpr const char* kClientModule = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so";

// p11-kit-client binds an instance to P11_KIT_SERVER_ADDRESS when the module is loaded, and
// setenv is not thread-safe, so remote members are loaded one at a time under this lock.
std::mutex& RemoteLoadMutex() {
  static std::mutex mu;
  return mu;
}

// Instances left behind by Discard(): a worker may still be inside one, so they are never
// finalised or unloaded, and stay reachable for the life of the process.
void KeepForever(CK_FUNCTION_LIST* instance) {
  static std::mutex mu;
  static auto* graveyard = new std::vector<CK_FUNCTION_LIST*>();
  std::lock_guard lock(mu);
  graveyard->push_back(instance);
}

// Marks the current thread as the one connecting a member: its calls pass the closed gate.
class ConnectorScope {
 public:
  explicit ConnectorScope(std::atomic<std::thread::id>& connector) : connector_(connector) {
    connector_.store(std::this_thread::get_id());
  }
  ~ConnectorScope() { connector_.store(std::thread::id{}); }
  ConnectorScope(const ConnectorScope&) = delete;
  ConnectorScope& operator=(const ConnectorScope&) = delete;

 private:
  std::atomic<std::thread::id>& connector_;
};

std::string TrimPadded(const unsigned char* field, std::size_t size) {
  std::string s(reinterpret_cast<const char*>(field), size);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\0')) s.pop_back();
  return s;
}

}  // namespace

bool LoginNotAVerdict(CK_RV rv) { return rv == CKR_GENERAL_ERROR || rv == CKR_USER_PIN_NOT_INITIALIZED; }

bool IsDeviceClass(CK_RV rv) {
  switch (rv) {
    case CKR_DEVICE_ERROR:
    case CKR_DEVICE_REMOVED:
    case CKR_TOKEN_NOT_PRESENT:
    case CKR_TOKEN_NOT_RECOGNIZED:
    case CKR_SESSION_HANDLE_INVALID:  // p11ha never sends a session the member did not give it
    case CKR_SESSION_CLOSED:
    case CKR_CRYPTOKI_NOT_INITIALIZED:
      return true;
    default:
      return false;
  }
}

const char* MemberStateName(MemberState state) {
  switch (state) {
    case MemberState::kDown:
      return "down";
    case MemberState::kRecovering:
      return "recovering";
    case MemberState::kUp:
      return "up";
  }
  return "?";
}

Member::Member(std::size_t index, config::MemberConfig config, std::chrono::milliseconds call_timeout)
    : index_(index),
      config_(std::move(config)),
      call_timeout_(call_timeout),
      executor_(std::make_unique<CallExecutor>(call_timeout)) {}

Member::~Member() {
  Disconnect();
  FinalizeLeftBehind();
  for (CK_FUNCTION_LIST* old : left_behind_) KeepForever(old);
  Unload();
}

void Member::Load() {
  if (functions() != nullptr) return;
  CK_FUNCTION_LIST* loaded = nullptr;
  char* error = nullptr;
  if (!config_.remote.empty()) {
    std::lock_guard lock(RemoteLoadMutex());
    const char* previous = std::getenv("P11_KIT_SERVER_ADDRESS");
    std::string saved = previous ? previous : "";
    setenv("P11_KIT_SERVER_ADDRESS", config_.remote.c_str(), 1);
    loaded = p11_kit_module_load(kClientModule, 0);
    if (previous) {
      setenv("P11_KIT_SERVER_ADDRESS", saved.c_str(), 1);
    } else {
      unsetenv("P11_KIT_SERVER_ADDRESS");
    }
  } else {
    loaded = p11_kit_module_load(config_.module.c_str(), 0);
  }
  if (loaded == nullptr) {
    error = p11_kit_message() ? const_cast<char*>(p11_kit_message()) : nullptr;
    std::string what = "member '" + config_.name + "': cannot load module '" +
                       (config_.remote.empty() ? config_.module : std::string(kClientModule)) + "'" +
                       (error ? std::string(": ") + error : std::string());
    throw CkError(CKR_GENERAL_ERROR, what);
  }
  functions_.store(loaded, std::memory_order_release);
}

bool Member::Connect() {
  Disconnect();
  FinalizeLeftBehind();
  if (functions() == nullptr) {
    try {
      Load();  // a fresh instance after Discard()
    } catch (const std::exception& e) {
      RecordFailure(e.what());
      return false;
    }
  }
  ConnectorScope connector(connector_);
  // Before any call: whatever still holds a handle of the last instance sees it is void.
  epoch_.fetch_add(1, std::memory_order_acq_rel);
  CK_FUNCTION_LIST* functions = this->functions();
  CK_RV rv = Execute("C_Initialize", CallKind::kParallel,
                     CallJob::Of([functions] { return p11_kit_module_initialize(functions); }));
  if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
    RecordFailure(std::string("C_Initialize failed: ") + RvName(rv));
    if (tainted_.load()) Discard("C_Initialize did not return");
    return false;
  }
  initialized_ = true;
  if (!FindToken()) return false;
  rv = Call("C_OpenSession", CallKind::kStore, &CK_FUNCTION_LIST::C_OpenSession, slot_,
            CK_FLAGS{CKF_SERIAL_SESSION | CKF_RW_SESSION}, CK_VOID_PTR{nullptr}, CK_NOTIFY{nullptr},
            &control_session_);
  if (rv != CKR_OK) {
    RecordFailure(std::string("cannot open a session: ") + RvName(rv));
    return false;
  }
  LoadMechanisms();
  if (tainted_.load()) return false;
  {
    std::lock_guard lock(status_mu_);
    since_ = std::chrono::system_clock::now();
  }
  state_.store(MemberState::kRecovering, std::memory_order_release);
  gate_open_.store(true);
  return true;
}

void Member::Activate() {
  state_.store(MemberState::kUp, std::memory_order_release);
  log::Get()->info("member {} up (slot {}, token '{}')", config_.name, slot_, TrimPadded(token_info_.label, 32));
}

bool Member::FindToken() {
  std::unique_ptr<P11KitUri, decltype(&p11_kit_uri_free)> uri(p11_kit_uri_new(), &p11_kit_uri_free);
  std::string text = config_.token.empty() ? "pkcs11:" : config_.token;
  if (p11_kit_uri_parse(text.c_str(), P11_KIT_URI_FOR_TOKEN, uri.get()) != P11_KIT_URI_OK) {
    RecordFailure("token URI '" + text + "' does not parse");
    return false;
  }
  CK_ULONG count = 0;
  CK_RV rv = Call("C_GetSlotList", CallKind::kParallel, &CK_FUNCTION_LIST::C_GetSlotList, CK_BBOOL{CK_TRUE},
                  CK_SLOT_ID_PTR{nullptr}, &count);
  std::vector<CK_SLOT_ID> slots(count);
  if (rv == CKR_OK && count > 0) {
    rv = Call("C_GetSlotList", CallKind::kParallel, &CK_FUNCTION_LIST::C_GetSlotList, CK_BBOOL{CK_TRUE},
              slots.data(), &count);
    slots.resize(count);
  }
  if (rv != CKR_OK) {
    RecordFailure(std::string("C_GetSlotList failed: ") + RvName(rv));
    return false;
  }
  for (CK_SLOT_ID slot : slots) {
    CK_TOKEN_INFO info{};
    if (Call("C_GetTokenInfo", CallKind::kParallel, &CK_FUNCTION_LIST::C_GetTokenInfo, slot, &info) != CKR_OK)
      continue;
    if (!(info.flags & CKF_TOKEN_INITIALIZED)) continue;
    if (p11_kit_uri_match_token_info(uri.get(), &info)) {
      slot_ = slot;
      token_info_ = info;
      return true;
    }
  }
  RecordFailure("no token matches '" + text + "'");
  return false;
}

void Member::LoadMechanisms() {
  mechanisms_.clear();
  CK_ULONG count = 0;
  if (Call("C_GetMechanismList", CallKind::kParallel, &CK_FUNCTION_LIST::C_GetMechanismList, slot_,
           CK_MECHANISM_TYPE_PTR{nullptr}, &count) != CKR_OK)
    return;
  // One spare entry: p11-kit 0.24's client drops the mechanisms its RPC cannot carry with a
  // memmove that reads one entry past the list (rpc-client.c mechanism_list_purge).
  std::vector<CK_MECHANISM_TYPE> types(count + 1);
  if (Call("C_GetMechanismList", CallKind::kParallel, &CK_FUNCTION_LIST::C_GetMechanismList, slot_, types.data(),
           &count) != CKR_OK)
    return;
  types.resize(count);
  for (CK_MECHANISM_TYPE type : types) {
    CK_MECHANISM_INFO info{};
    if (Call("C_GetMechanismInfo", CallKind::kParallel, &CK_FUNCTION_LIST::C_GetMechanismInfo, slot_, type, &info) ==
        CKR_OK)
      mechanisms_.emplace_back(type, info);
  }
}

void Member::Disconnect() {
  state_.store(MemberState::kDown, std::memory_order_release);
  gate_open_.store(false);
  if (!initialized_) {
    if (tainted_.load()) Discard("a call did not return");
    return;
  }
  // Calls admitted before the gate closed finish first; finalising under them is undefined.
  const auto deadline = std::chrono::steady_clock::now() + call_timeout_;
  while (active_.load() > 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  // An abandoned call that has come back out of the member (a released stall, a remote call
  // whose connection p11ha closed) leaves the instance as usable as any failed one.
  if (tainted_.load() && executor_->abandoned() == 0) tainted_.store(false);
  if (tainted_.load() || active_.load() > 0) {
    Discard(tainted_.load() ? "a call did not return" : "calls still running");
    return;
  }
  ConnectorScope connector(connector_);
  CK_FUNCTION_LIST* functions = this->functions();
  Execute("C_Finalize", CallKind::kParallel, CallJob::Of([functions] { return p11_kit_module_finalize(functions); }));
  control_session_ = CK_INVALID_HANDLE;
  initialized_ = false;
  if (tainted_.load()) Discard("C_Finalize did not return");
}

void Member::Discard(const std::string& why) {
  CK_FUNCTION_LIST* old = functions_.exchange(nullptr, std::memory_order_acq_rel);
  if (old != nullptr) left_behind_.push_back(old);
  // The abandoned call may hold the old store lock for ever; the next instance needs its own.
  store_mu_.store(std::make_shared<std::mutex>());
  initialized_ = false;
  control_session_ = CK_INVALID_HANDLE;
  tainted_.store(false);
  log::Get()->warn("member {}: instance left behind ({}); the next probe loads a fresh one", config_.name, why);
}

void Member::FinalizeLeftBehind() {
  // Only once no abandoned call is inside any of them. Until then a module loaded through
  // p11-kit counts them as initialised, and its own C_Finalize/C_Initialize (which clears a
  // failed HSM's state) never runs.
  if (left_behind_.empty() || executor_->abandoned() != 0) return;
  ConnectorScope connector(connector_);
  for (CK_FUNCTION_LIST* old : left_behind_) {
    if (Execute("C_Finalize", CallKind::kParallel,
                CallJob::Of([old] { return p11_kit_module_finalize(old); })) == CKR_DEVICE_ERROR &&
        executor_->abandoned() != 0) {
      KeepForever(old);  // it hung again: never touched after this
      continue;
    }
    p11_kit_module_release(old);
  }
  left_behind_.clear();
}

void Member::Unload() {
  CK_FUNCTION_LIST* functions = functions_.exchange(nullptr, std::memory_order_acq_rel);
  if (functions != nullptr) p11_kit_module_release(functions);
}

void Member::StopWorkers(std::chrono::steady_clock::time_point deadline) {
  std::size_t left = executor_->Shutdown(deadline);
  if (left > 0)
    log::Get()->warn("member {}: {} call(s) still inside the member at C_Finalize are left behind", config_.name,
                     left);
}

CK_RV Member::Execute(const char* name, CallKind kind, const CallJob& job) {
  active_.fetch_add(1);
  struct Leave {
    std::atomic<int>& active;
    ~Leave() { active.fetch_sub(1); }
  } leave{active_};
  if (!gate_open_.load() && connector_.load() != std::this_thread::get_id()) return CKR_DEVICE_ERROR;
  // Read after `active_` is raised: Disconnect waits for it, so the epoch cannot move on under
  // this call once it is admitted.
  if (PinnedEpoch::Stale(this, epoch())) return kStaleRoute;
  const auto start = std::chrono::steady_clock::now();
  CK_RV rv;
  if (use_workers_) {
    auto unanswered = CallExecutor::Unanswered::kTimedOut;
    auto answer = executor_->Run(job, kind == CallKind::kStore ? store_mu_.load() : nullptr,
                                 ApplicationCall::AnswerWait(call_timeout_), name, &unanswered);
    if (!answer) {
      if (unanswered == CallExecutor::Unanswered::kReleased) {
        OnAbandoned(std::string(name) + " abandoned: the device failed under another call");
      } else {
        ApplicationCall::NoteWaitedOut();
        OnAbandoned(std::string(name) + " did not answer within " + std::to_string(call_timeout_.count()) + " ms");
      }
      return CKR_DEVICE_ERROR;
    }
    rv = *answer;
  } else {
    CallScope scope(*this, kind);
    rv = job();
  }
  // Most calls succeed and trace is off: then nothing is logged, and the logger is not touched.
  if (rv == CKR_OK && !log::Enabled(spdlog::level::trace)) return rv;
  auto elapsed = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  auto logger = log::Get();
  const CK_RV answer = rv & ~kInitRefused;
  const char* refused = (rv & kInitRefused) != 0 ? " (its operation's start)" : "";
  if (rv == CKR_OK) {
    logger->trace("member {} {} -> CKR_OK ({:.3f} ms)", config_.name, name, elapsed);
  } else if (IsDeviceClass(answer)) {
    // A remote member's device failed: its connection is gone, and a call still on it may
    // never come back, so its other calls in flight are not waited for. Their connection is
    // shut down before p11ha answers (OnAbandoned), so none of them writes its outputs later.
    // An in-process member's calls are waited for: one let go could still write into the
    // application's buffers after p11ha has answered.
    if (use_workers_ && !config_.remote.empty() && (answer == CKR_DEVICE_ERROR || answer == CKR_DEVICE_REMOVED))
      executor_->ReleaseWaiters();
    logger->warn("member {} {} -> {}{} ({:.3f} ms)", config_.name, name, RvName(answer), refused, elapsed);
  } else {
    logger->debug("member {} {} -> {}{} ({:.3f} ms)", config_.name, name, RvName(answer), refused, elapsed);
  }
  return rv;
}

void Member::OnAbandoned(const std::string& why) {
  tainted_.store(true);
  MarkDown(why);
  if (!config_.remote.empty()) ShutdownRemoteSockets();
}

void Member::ShutdownRemoteSockets() {
  constexpr std::string_view kPrefix = "unix:path=";
  if (!std::string_view(config_.remote).starts_with(kPrefix)) return;
  std::string path = config_.remote.substr(kPrefix.size());
  DIR* fds = opendir("/proc/self/fd");
  if (fds == nullptr) return;
  while (dirent* entry = readdir(fds)) {
    char* end = nullptr;
    long fd = std::strtol(entry->d_name, &end, 10);
    if (end == entry->d_name || *end != '\0' || fd == dirfd(fds)) continue;
    sockaddr_un peer{};
    socklen_t length = sizeof peer;
    if (getpeername(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&peer), &length) != 0 ||
        peer.sun_family != AF_UNIX)
      continue;
    std::size_t used = length > offsetof(sockaddr_un, sun_path) ? length - offsetof(sockaddr_un, sun_path) : 0;
    std::string peer_path(peer.sun_path, strnlen(peer.sun_path, used));
    if (peer_path == path) shutdown(static_cast<int>(fd), SHUT_RDWR);
  }
  closedir(fds);
}

void Member::RecordFailure(const std::string& what) {
  failures_.fetch_add(1, std::memory_order_relaxed);
  {
    std::lock_guard lock(status_mu_);
    last_error_ = what;
  }
  log::Get()->warn("member {}: {}", config_.name, what);
}

void Member::MarkDown(const std::string& why) {
  if (state_.exchange(MemberState::kDown, std::memory_order_acq_rel) != MemberState::kDown) {
    std::lock_guard lock(status_mu_);
    since_ = std::chrono::system_clock::now();
  }
  RecordFailure("down: " + why);
}

MemberStatus Member::Status() const {
  MemberStatus status;
  status.name = config_.name;
  status.state = state_.load(std::memory_order_acquire);
  status.standby = config_.standby;
  status.failures = failures_.load(std::memory_order_relaxed);
  status.epoch = epoch();
  std::lock_guard lock(status_mu_);
  status.since = since_;
  status.last_error = last_error_;
  return status;
}

CK_RV Member::Login(CK_USER_TYPE user, const SecureBytes& pin) {
  CK_RV rv = Call("C_Login", CallKind::kStore, &CK_FUNCTION_LIST::C_Login, control_session_, user,
                  const_cast<CK_UTF8CHAR_PTR>(pin.data()), CK_ULONG{pin.size()});
  return rv == CKR_USER_ALREADY_LOGGED_IN ? CKR_OK : rv;
}

CK_RV Member::Logout() {
  CK_RV rv = Call("C_Logout", CallKind::kStore, &CK_FUNCTION_LIST::C_Logout, control_session_);
  return rv == CKR_USER_NOT_LOGGED_IN ? CKR_OK : rv;
}

Member::CallScope::CallScope(Member& member, CallKind kind) : member_(member) {
  if (kind == CallKind::kStore) {
    store_ = member.store_mu_.load();
    store_lock_ = std::unique_lock(*store_);
  }
  // A write to a dead p11-kit remote member raises SIGPIPE, which would kill the host process.
  if (!member.config_.remote.empty()) {
    sigset_t pipe;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    sigset_t pending;
    sigpending(&pending);
    had_pipe_pending_ = sigismember(&pending, SIGPIPE) == 1;
    pipe_shielded_ = pthread_sigmask(SIG_BLOCK, &pipe, &old_mask_) == 0;
  }
}

Member::CallScope::~CallScope() {
  if (!pipe_shielded_) return;
  sigset_t pending;
  sigpending(&pending);
  if (!had_pipe_pending_ && sigismember(&pending, SIGPIPE) == 1) {
    sigset_t pipe;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    timespec zero{0, 0};
    sigtimedwait(&pipe, nullptr, &zero);
  }
  pthread_sigmask(SIG_SETMASK, &old_mask_, nullptr);
}

}  // namespace p11ha
