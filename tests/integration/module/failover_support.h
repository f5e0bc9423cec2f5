// SPDX-License-Identifier: Apache-2.0
// Helpers of the failover tests (failover_test.cpp, failover_outage_test.cpp): a cluster of
// three staged test members (tests/fakes/test_member.h) behind p11ha, faults placed on one
// member and checked to be hit, a trace of what the application saw, and a watchdog for calls
// that never return.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "support.h"

namespace p11ha::module_test::failover {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr unsigned kCallTimeoutMs = 500;
constexpr unsigned kProbeIntervalMs = 200;
constexpr int kMembers = 3;
// Longer than any operation with one fault can take once failover works (a stall costs
// call_timeout_ms): past it the test calls the operation hung.
constexpr milliseconds kHungAfter(4 * kCallTimeoutMs + 1000);
// "A few probe intervals", with room for a loaded machine.
constexpr milliseconds kBackWithin(15 * kProbeIntervalMs);

long long NowMs();  // CLOCK_REALTIME, as served_log stamps lines

// Replaces the member's control file. No Catch inside: watchdog threads and destructors call it.
bool WriteControl(const std::string& so, const std::string& spec) noexcept;

// SoftHSM 2.6.1 fails a login now and then while another process rewrites the token file
// (research/softhsm-2.6.1.md §9). p11ha retries that per member; this retries too rather than
// fail a test on the race. The tests never open a member token from another process while
// p11ha runs, which is what starts the race.
CK_RV LoginUser(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE session);

// Without a call timeout in p11ha a stalled member call never returns, and the test would sit
// until ctest kills it. Past the deadline this releases every stall with a new spec (the member
// then answers CKR_DEVICE_ERROR and writes nothing), so the test reports what the app saw.
class Watchdog {
 public:
  Watchdog(std::vector<std::string> sos, milliseconds after);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;
  bool fired() const { return fired_; }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::atomic<bool> fired_{false};
  std::thread thread_;  // last: starts once the rest exists
};

// The application calls of one scenario with their answers and times.
class Trace {
 public:
  CK_RV operator()(const std::string& call, const std::function<CK_RV()>& body);
  bool AllOk() const;
  long long SlowestMs() const;
  std::string Text() const;

 private:
  struct Call {
    std::string name;
    CK_RV rv;
    long long ms;
  };
  std::vector<Call> calls_;
};

// "0x00000030 x3, 0x00000000 x1": answers of repeated calls, in order, runs counted.
std::string Tally(const std::vector<CK_RV>& answers);

enum class Kind { kFail, kStall, kRestart };

// `fail FUNCTION CKR_DEVICE_ERROR times 1`, `stall FUNCTION times 1` or `restart FUNCTION`,
// each with `after N` when N > 0: the member fails once and then serves again.
std::string FaultSpec(Kind kind, const std::string& function, int after);

// A fault placed on one member: hit once that member counted `after` + 1 calls of `function`.
struct Armed {
  int member = -1;  // 0-based
  std::string function;
  std::string spec;
  int after = 0;
  int count_before = 0;
  long long at_ms = 0;
};

// Three staged members with a domain key and served_log files, p11ha initialised over them
// (priority policy, call_timeout_ms 500, probe_interval_ms 200, log in the temp dir), a
// logged-in session and a token EC P-256 key pair, which p11ha copies to every member.
class Cluster {
 public:
  explicit Cluster(std::optional<std::uint64_t> replay_limit_bytes = std::nullopt);
  // Releases stalled member calls first: p11ha's C_Finalize would wait for them.
  ~Cluster();
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  CK_FUNCTION_LIST* f() const { return f_; }
  CK_SESSION_HANDLE session() const { return session_; }
  const KeyPair& key() const { return key_; }
  const Bytes& point() const { return point_; }
  const std::vector<std::string>& sos() const { return sos_; }

  int Count(int member, const char* function) const;
  std::vector<int> Counts(const char* function) const;
  // Calls of every function the member counted, failed ones included.
  int AllCalls(int member) const;
  // The one member whose count of `function` moved since `before`, or -1.
  int MovedMember(const char* function, const std::vector<int>& before) const;

  void Fault(int member, const std::string& spec) const;
  void Arm(Kind kind, int member, const std::string& function, int after, Armed* armed) const;
  int CallsSince(const Armed& armed) const;
  bool Hit(const Armed& armed) const;

  // Whether member's served_log has a `function` line stamped at or after `since`.
  bool ServedSince(int member, const std::string& function, long long since) const;
  // Signs through p11ha, with the same session and key, until `member` signs again. Every
  // signature must verify: after a restart a stale member handle could name another key.
  bool SignsAgainOn(int member, long long since, std::string* seen) const;

  std::string LogTail() const;
  std::string LogPath() const { return dir_ / "p11ha.log"; }

 private:
  std::string ServedLog(int member) const;

  TempDir dir_;  // first: outlives the module run below
  std::vector<std::string> sos_;
  CK_FUNCTION_LIST* f_ = nullptr;
  std::unique_ptr<Initialized> initialized_;
  CK_SESSION_HANDLE session_ = CK_INVALID_HANDLE;
  KeyPair key_;
  Bytes point_;
};

}  // namespace p11ha::module_test::failover
