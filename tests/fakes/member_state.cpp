// SPDX-License-Identifier: Apache-2.0
#include "member_state.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>

namespace p11ha::test_member {
namespace {

constexpr const char* kDefaultSoftHsm = "/usr/lib/softhsm/libsofthsm2.so";
// Short enough for a hung call to notice a control file written by another process quickly.
constexpr auto kHangPollInterval = std::chrono::milliseconds(50);

std::string OwnPath() {
  Dl_info info{};
  static const int kAnchor = 0;
  if (dladdr(&kAnchor, &info) == 0 || info.dli_fname == nullptr) return {};
  return info.dli_fname;
}

void Warn(const std::string& so_path, const std::string& message) {
  std::fprintf(stderr, "p11ha-test-member %s: %s\n", so_path.c_str(), message.c_str());
}

std::string_view Trim(std::string_view text) {
  const auto first = text.find_first_not_of(" \t\r\n");
  if (first == std::string_view::npos) return {};
  const auto last = text.find_last_not_of(" \t\r\n");
  return text.substr(first, last - first + 1);
}

std::optional<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// Every copy of the test member in the process swaps SOFTHSM2_CONF around its C_Initialize.
// The copies share no memory, so they exclude each other with an open-file-description lock
// on the byte at offset getpid() of a common file: copies in one process conflict, other
// processes lock other bytes and never wait.
class EnvironmentLock {
 public:
  EnvironmentLock() {
    fd_ = open("/tmp/p11ha-test-member.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (fd_ < 0) return;
    fchmod(fd_, 0666);  // The first creator's umask must not lock other users out.
    struct flock lock {};
    lock.l_type = F_WRLCK;
    lock.l_whence = SEEK_SET;
    lock.l_start = getpid();
    lock.l_len = 1;
    while (fcntl(fd_, F_OFD_SETLKW, &lock) != 0 && errno == EINTR) {
    }
  }
  ~EnvironmentLock() {
    if (fd_ >= 0) close(fd_);
  }
  EnvironmentLock(const EnvironmentLock&) = delete;
  EnvironmentLock& operator=(const EnvironmentLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace

Member& Member::Instance() {
  // Never destroyed: a hung caller may still wait on it at exit.
  static Member* const instance = new Member();
  return *instance;
}

Member::Member() : so_path_(OwnPath()) {}

std::optional<CK_RV> Member::Admit(Fn fn, Admission* admission) {
  if (admission != nullptr) {
    *admission = Admission{false, instance_.load(std::memory_order_acquire)};
  }
  counts_[static_cast<std::size_t>(fn)].fetch_add(1, std::memory_order_relaxed);
  PollControlFile();
  std::unique_lock lock(fault_mutex_);
  const bool lifecycle =
      fn == Fn::kC_GetFunctionList || fn == Fn::kC_Initialize || fn == Fn::kC_Finalize;
  if (dead_ && fn != Fn::kC_GetFunctionList && fn != Fn::kC_Finalize) return CKR_DEVICE_ERROR;
  if (restart_pending_ && !lifecycle && initialized_) {
    restart_pending_ = false;
    lock.unlock();
    Restart();
    return CKR_DEVICE_ERROR;
  }
  // Every matching rule sees the call; only the one that answers it counts it as fired.
  ActiveRule* restart = nullptr;
  ActiveRule* fail = nullptr;
  ActiveRule* stall = nullptr;
  bool hang = false;
  for (auto& active : rules_) {
    const auto& rule = active.rule;
    if (rule.function ? *rule.function != fn : !WildcardMatches(fn)) continue;
    if (++active.seen <= rule.after) continue;
    const bool fires = !rule.times || active.fired < *rule.times;
    switch (rule.kind) {
      case FaultRule::Kind::kHang:
        hang = true;
        break;
      case FaultRule::Kind::kStall:
        if (stall == nullptr && fires) stall = &active;
        break;
      case FaultRule::Kind::kRestart:
        // Once, and only on a call a running SoftHSM would serve.
        if (restart == nullptr && active.fired == 0 && !lifecycle && initialized_) {
          restart = &active;
        }
        break;
      default:
        if (fail == nullptr && fires) fail = &active;
        break;
    }
  }
  if (restart != nullptr) {
    ++restart->fired;
    lock.unlock();
    Restart();
    return CKR_DEVICE_ERROR;
  }
  if (fail != nullptr) {
    ++fail->fired;
    if (admission != nullptr) admission->end_operation = true;
    return fail->rule.rv;
  }
  if (stall != nullptr) {
    ++stall->fired;  // before waiting: a new spec replaces the rules
    // Never forwarded, whoever releases it: the caller that gave up on this call may have
    // freed the buffers it passed.
    const bool by_finalize = WaitForReleaseLocked(lock);
    if (admission != nullptr) admission->end_operation = !by_finalize;
    return CKR_DEVICE_ERROR;
  }
  if (hang && WaitForReleaseLocked(lock)) return CKR_DEVICE_ERROR;
  return std::nullopt;
}

bool Member::WaitForReleaseLocked(std::unique_lock<std::mutex>& lock) {
  const auto generation = generation_;
  const auto epoch = finalize_epoch_;
  while (generation_ == generation && finalize_epoch_ == epoch) {
    if (fault_changed_.wait_for(lock, kHangPollInterval) == std::cv_status::timeout) {
      lock.unlock();
      PollControlFile();
      lock.lock();
    }
  }
  return finalize_epoch_ != epoch;
}

CK_RV Member::Initialize(void* init_args) {
  if (init_args != nullptr) {
    const auto* args = static_cast<const CK_C_INITIALIZE_ARGS*>(init_args);
    const int mutex_functions = (args->CreateMutex != nullptr) + (args->DestroyMutex != nullptr) +
                                (args->LockMutex != nullptr) + (args->UnlockMutex != nullptr);
    if (args->pReserved != nullptr || (mutex_functions != 0 && mutex_functions != 4)) {
      return CKR_ARGUMENTS_BAD;
    }
    // Application mutexes are not needed: this module and SoftHSM use OS locking either way.
  }
  std::unique_lock call_lock(call_mutex_);
  if (initialized_) return CKR_CRYPTOKI_ALREADY_INITIALIZED;

  std::string library = kDefaultSoftHsm;
  softhsm_conf_.clear();
  mechanisms_.reset();
  served_log_.clear();
  if (const auto text = ReadFile(so_path_ + ".conf")) {
    std::istringstream lines(*text);
    std::string line;
    while (std::getline(lines, line)) {
      const auto content = Trim(std::string_view(line).substr(0, line.find('#')));
      if (content.empty()) continue;
      const auto eq = content.find('=');
      const auto key = Trim(content.substr(0, eq));
      const auto value =
          eq == std::string_view::npos ? std::string_view() : Trim(content.substr(eq + 1));
      if (key == "softhsm_lib") {
        library = value;
      } else if (key == "softhsm_conf") {
        softhsm_conf_ = value;
      } else if (key == "served_log") {
        served_log_ = value;
      } else if (key == "mechanisms") {
        std::vector<CK_MECHANISM_TYPE> list;
        std::istringstream items{std::string(value)};
        std::string item;
        while (std::getline(items, item, ',')) {
          const std::string number(Trim(item));
          char* end = nullptr;
          const auto type = std::strtoul(number.c_str(), &end, 0);
          if (number.empty() || *end != '\0') {
            Warn(so_path_, ".conf: bad mechanism '" + number + "'");
            return CKR_GENERAL_ERROR;
          }
          list.push_back(type);
        }
        mechanisms_ = std::move(list);
      } else {
        Warn(so_path_, ".conf: unknown line '" + std::string(content) + "'");
      }
    }
  }
  if (const CK_RV rv = LoadLibrary(library); rv != CKR_OK) return rv;
  const CK_RV rv = InitializeSoftHsm();
  if (rv != CKR_OK) return rv;
  initialized_ = true;
  std::lock_guard fault_lock(fault_mutex_);
  dead_ = false;
  return CKR_OK;
}

CK_RV Member::LoadLibrary(const std::string& path) {
  if (library_ != nullptr && path == library_path_) return CKR_OK;
  // The previous library stays loaded: a hung or abandoned caller may still be inside it.
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    Warn(so_path_, std::string("cannot load ") + dlerror());
    return CKR_GENERAL_ERROR;
  }
  auto* get_function_list =
      reinterpret_cast<CK_C_GetFunctionList>(dlsym(handle, "C_GetFunctionList"));
  CK_FUNCTION_LIST* functions = nullptr;
  if (get_function_list == nullptr || get_function_list(&functions) != CKR_OK ||
      functions == nullptr) {
    Warn(so_path_, path + " has no usable C_GetFunctionList");
    dlclose(handle);
    return CKR_GENERAL_ERROR;
  }
  library_ = handle;
  library_path_ = path;
  functions_ = functions;
  return CKR_OK;
}

CK_RV Member::InitializeSoftHsm() {
  EnvironmentLock env_lock;
  std::optional<std::string> saved;
  if (!softhsm_conf_.empty()) {
    if (const char* old = std::getenv("SOFTHSM2_CONF")) saved = old;
    setenv("SOFTHSM2_CONF", softhsm_conf_.c_str(), 1);
  }
  CK_C_INITIALIZE_ARGS args{};
  args.flags = CKF_OS_LOCKING_OK;
  const CK_RV rv = functions_->C_Initialize(&args);
  if (!softhsm_conf_.empty()) {
    if (saved) {
      setenv("SOFTHSM2_CONF", saved->c_str(), 1);
    } else {
      unsetenv("SOFTHSM2_CONF");
    }
  }
  return rv;
}

void Member::Restart() {
  std::unique_lock call_lock(call_mutex_);
  if (!initialized_) return;
  instance_.fetch_add(1, std::memory_order_acq_rel);
  functions_->C_Finalize(nullptr);
  if (const CK_RV rv = InitializeSoftHsm(); rv != CKR_OK) {
    initialized_ = false;
    Warn(so_path_, "restart: SoftHSM C_Initialize failed with " + std::to_string(rv));
  }
}

CK_RV Member::Finalize(void* reserved) {
  if (reserved != nullptr) return CKR_ARGUMENTS_BAD;
  {
    std::lock_guard fault_lock(fault_mutex_);
    dead_ = false;
    restart_pending_ = false;
    ++finalize_epoch_;
  }
  fault_changed_.notify_all();
  CK_RV rv = CKR_OK;
  {
    std::unique_lock call_lock(call_mutex_);
    if (!initialized_) return CKR_CRYPTOKI_NOT_INITIALIZED;
    instance_.fetch_add(1, std::memory_order_acq_rel);
    rv = functions_->C_Finalize(nullptr);
    if (rv == CKR_OK) initialized_ = false;
  }
  DumpCounts();
  return rv;
}

int Member::Count(std::string_view function) const {
  const auto fn = FunctionFromName(function);
  if (!fn) return -1;
  return counts_[static_cast<std::size_t>(*fn)].load(std::memory_order_relaxed);
}

void Member::ResetCounts() {
  for (auto& count : counts_) count.store(0, std::memory_order_relaxed);
}

void Member::SetFault(std::string_view spec) {
  {
    std::lock_guard fault_lock(fault_mutex_);
    ApplySpecLocked(spec, "set_fault");
  }
  fault_changed_.notify_all();
}

void Member::ApplySpecLocked(std::string_view spec, std::string_view source) {
  std::vector<std::string> errors;
  const auto rules = ParseFaultSpec(spec, &errors);
  for (const auto& error : errors) {
    Warn(so_path_, std::string(source) + ": ignored '" + error + "'");
  }
  rules_.clear();
  restart_pending_ = false;
  ++generation_;
  for (const auto& rule : rules) {
    switch (rule.kind) {
      case FaultRule::Kind::kClear:
        rules_.clear();
        restart_pending_ = false;
        break;
      case FaultRule::Kind::kDead:
        dead_ = true;
        break;
      case FaultRule::Kind::kRestart:
        if (rule.any_call) {
          restart_pending_ = true;
        } else {
          rules_.push_back(ActiveRule{rule});
        }
        break;
      case FaultRule::Kind::kFail:
      case FaultRule::Kind::kHang:
      case FaultRule::Kind::kStall:
        rules_.push_back(ActiveRule{rule});
        break;
    }
  }
}

void Member::PollControlFile() {
  if (so_path_.empty()) return;
  const std::string path = so_path_ + ".ctl";
  std::lock_guard control_lock(control_mutex_);
  struct stat st {};
  FileKey key{};
  if (stat(path.c_str(), &st) == 0) {
    key = FileKey(st.st_dev, st.st_ino, st.st_size, st.st_mtim.tv_sec, st.st_mtim.tv_nsec,
                  st.st_ctim.tv_sec, st.st_ctim.tv_nsec);
  }
  if (key == control_key_) return;
  control_key_ = key;
  if (key == FileKey{}) return;
  const auto text = ReadFile(path);
  if (!text) return;
  {
    std::lock_guard fault_lock(fault_mutex_);
    ApplySpecLocked(*text, ".ctl");
  }
  fault_changed_.notify_all();
}

bool Member::HandsOutResult(Fn fn) {
  switch (fn) {
    case Fn::kC_Encrypt:
    case Fn::kC_EncryptFinal:
    case Fn::kC_Decrypt:
    case Fn::kC_DecryptFinal:
    case Fn::kC_Digest:
    case Fn::kC_DigestFinal:
    case Fn::kC_Sign:
    case Fn::kC_SignFinal:
    case Fn::kC_SignRecover:
    case Fn::kC_Verify:
    case Fn::kC_VerifyFinal:
    case Fn::kC_VerifyRecover:
      return true;
    default:
      return false;
  }
}

void Member::LogServed(Fn fn) const {
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  const long long ms = static_cast<long long>(now.tv_sec) * 1000 + now.tv_nsec / 1000000;
  const std::string line = std::to_string(ms) + " " + std::string(FunctionName(fn)) + "\n";
  // Opened per line: the file may be moved or removed between calls, and a restarted process
  // appends to it just the same. One write() to an O_APPEND file keeps lines whole.
  const int fd = open(served_log_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0 || write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
    Warn(so_path_, "cannot append to served_log " + served_log_ + ": " + std::strerror(errno));
  }
  if (fd >= 0) close(fd);
}

void Member::DumpCounts() const {
  if (so_path_.empty()) return;
  const std::string path = so_path_ + ".counts";
  const std::string temp = path + ".tmp";
  std::lock_guard dump_lock(dump_mutex_);
  {
    std::ofstream out(temp, std::ios::trunc);
    if (!out) {
      Warn(so_path_, "cannot write " + temp);
      return;
    }
    for (std::size_t i = 0; i < kFunctionCount; ++i) {
      out << kFunctionNames[i] << ' ' << counts_[i].load(std::memory_order_relaxed) << '\n';
    }
  }
  if (std::rename(temp.c_str(), path.c_str()) != 0) Warn(so_path_, "cannot write " + path);
}

}  // namespace p11ha::test_member
