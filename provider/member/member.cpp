// SPDX-License-Identifier: Apache-2.0
#include "provider/member/member.h"

#include <p11-kit/p11-kit.h>
#include <p11-kit/uri.h>

#include <cstdlib>
#include <memory>
#include <vector>

#include "provider/core/error.h"
#include "provider/core/log.h"

namespace p11ha {
namespace {

constexpr const char* kClientModule = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so";

// p11-kit-client binds an instance to P11_KIT_SERVER_ADDRESS when the module is loaded, and
// setenv is not thread-safe, so remote members are loaded one at a time under this lock.
std::mutex& RemoteLoadMutex() {
  static std::mutex mu;
  return mu;
}

std::string TrimPadded(const unsigned char* field, std::size_t size) {
  std::string s(reinterpret_cast<const char*>(field), size);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\0')) s.pop_back();
  return s;
}

}  // namespace

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

Member::Member(std::size_t index, config::MemberConfig config) : index_(index), config_(std::move(config)) {}

Member::~Member() {
  Disconnect();
  Unload();
}

void Member::Load() {
  if (functions_ != nullptr) return;
  char* error = nullptr;
  if (!config_.remote.empty()) {
    std::lock_guard lock(RemoteLoadMutex());
    const char* previous = std::getenv("P11_KIT_SERVER_ADDRESS");
    std::string saved = previous ? previous : "";
    setenv("P11_KIT_SERVER_ADDRESS", config_.remote.c_str(), 1);
    functions_ = p11_kit_module_load(kClientModule, 0);
    if (previous) {
      setenv("P11_KIT_SERVER_ADDRESS", saved.c_str(), 1);
    } else {
      unsetenv("P11_KIT_SERVER_ADDRESS");
    }
  } else {
    functions_ = p11_kit_module_load(config_.module.c_str(), 0);
  }
  if (functions_ == nullptr) {
    error = p11_kit_message() ? const_cast<char*>(p11_kit_message()) : nullptr;
    std::string what = "member '" + config_.name + "': cannot load module '" +
                       (config_.remote.empty() ? config_.module : std::string(kClientModule)) + "'" +
                       (error ? std::string(": ") + error : std::string());
    throw CkError(CKR_GENERAL_ERROR, what);
  }
}

bool Member::Connect() {
  if (functions_ == nullptr) return false;
  Disconnect();
  CK_RV rv = p11_kit_module_initialize(functions_);
  if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
    RecordFailure(std::string("C_Initialize failed: ") + RvName(rv));
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
  epoch_.fetch_add(1, std::memory_order_acq_rel);
  {
    std::lock_guard lock(status_mu_);
    since_ = std::chrono::system_clock::now();
  }
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
  std::vector<CK_MECHANISM_TYPE> types(count);
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
  if (!initialized_) return;
  control_session_ = CK_INVALID_HANDLE;
  p11_kit_module_finalize(functions_);
  initialized_ = false;
}

void Member::Unload() {
  if (functions_ == nullptr) return;
  p11_kit_module_release(functions_);
  functions_ = nullptr;
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
  MemberState expected = MemberState::kUp;
  if (state_.compare_exchange_strong(expected, MemberState::kDown, std::memory_order_acq_rel)) {
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
  if (kind == CallKind::kStore) store_lock_ = std::unique_lock(member.store_mu_);
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
  start_ = std::chrono::steady_clock::now();
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

void Member::CallScope::Finish(const char* name, CK_RV rv) {
  auto elapsed = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start_).count();
  auto logger = log::Get();
  if (rv == CKR_OK) {
    logger->trace("member {} {} -> CKR_OK ({:.3f} ms)", member_.config_.name, name, elapsed);
  } else if (IsDeviceClass(rv)) {
    logger->warn("member {} {} -> {} ({:.3f} ms)", member_.config_.name, name, RvName(rv), elapsed);
  } else {
    logger->debug("member {} {} -> {} ({:.3f} ms)", member_.config_.name, name, RvName(rv), elapsed);
  }
}

}  // namespace p11ha
