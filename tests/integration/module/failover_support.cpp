// SPDX-License-Identifier: Apache-2.0
#include "failover_support.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "tests/fakes/fault_spec.h"

namespace p11ha::module_test::failover {

long long NowMs() {
  return std::chrono::duration_cast<milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

bool WriteControl(const std::string& so, const std::string& spec) noexcept {
  try {
    const std::string path = so + ".ctl";
    // A name per thread: the watchdog may write while the test thread does.
    const std::string temp = path + ".tmp" + std::to_string(std::hash<std::thread::id>()(std::this_thread::get_id()));
    {
      std::ofstream out(temp, std::ios::trunc);
      out << spec << "\n";
      if (!out.flush()) return false;
    }
    return std::rename(temp.c_str(), path.c_str()) == 0;
  } catch (...) {
    return false;
  }
}

CK_RV LoginUser(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE session) {
  CK_RV rv = CKR_GENERAL_ERROR;
  for (int attempt = 0; attempt < 5; ++attempt) {
    rv = Login(f, session, kUserPin);
    if (rv != CKR_GENERAL_ERROR && rv != CKR_USER_PIN_NOT_INITIALIZED) break;
    std::this_thread::sleep_for(milliseconds(100 * (attempt + 1)));
  }
  return rv;
}

Watchdog::Watchdog(std::vector<std::string> sos, milliseconds after)
    : thread_([this, sos = std::move(sos), after] {
        std::unique_lock lock(mu_);
        if (cv_.wait_for(lock, after, [this] { return done_; })) return;
        fired_ = true;
        lock.unlock();
        for (const std::string& so : sos) WriteControl(so, "clear");
      }) {}

Watchdog::~Watchdog() {
  {
    std::lock_guard lock(mu_);
    done_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

CK_RV Trace::operator()(const std::string& call, const std::function<CK_RV()>& body) {
  const auto start = Clock::now();
  const CK_RV rv = body();
  const long long ms = std::chrono::duration_cast<milliseconds>(Clock::now() - start).count();
  calls_.push_back({call, rv, ms});
  return rv;
}

bool Trace::AllOk() const {
  return std::all_of(calls_.begin(), calls_.end(), [](const Call& c) { return c.rv == CKR_OK; });
}

long long Trace::SlowestMs() const {
  long long slowest = 0;
  for (const Call& c : calls_) slowest = std::max(slowest, c.ms);
  return slowest;
}

std::string Trace::Text() const {
  std::ostringstream out;
  for (const Call& c : calls_) out << "  " << c.name << " -> " << RvText(c.rv) << " in " << c.ms << " ms\n";
  return out.str();
}

std::string Tally(const std::vector<CK_RV>& answers) {
  std::string text;
  for (std::size_t i = 0; i < answers.size();) {
    std::size_t run = 1;
    while (i + run < answers.size() && answers[i + run] == answers[i]) ++run;
    text += (text.empty() ? "" : ", ") + RvText(answers[i]) + " x" + std::to_string(run);
    i += run;
  }
  return text.empty() ? "none" : text;
}

std::string FaultSpec(Kind kind, const std::string& function, int after) {
  const std::string tail = after > 0 ? " after " + std::to_string(after) : "";
  switch (kind) {
    case Kind::kFail:
      return "fail " + function + " CKR_DEVICE_ERROR" + tail + " times 1";
    case Kind::kStall:
      return "stall " + function + tail + " times 1";
    case Kind::kRestart:
      return "restart " + function + tail;
  }
  return "";
}

Cluster::Cluster(std::optional<std::uint64_t> replay_limit_bytes) {
  StageMembers(dir_.path(), kMembers);
  for (int i = 0; i < kMembers; ++i) {
    const std::string so = MemberSo(dir_.path(), i + 1);
    WriteFile(so + ".conf", ReadFile(so + ".conf") + "served_log=" + ServedLog(i) + "\n");
    sos_.push_back(so);
  }
  ConfigSpec spec;
  spec.members = TestMembers(dir_.path(), kMembers);
  spec.policy = "priority";
  spec.probe_interval_ms = kProbeIntervalMs;
  spec.call_timeout_ms = kCallTimeoutMs;
  spec.replay_limit_bytes = replay_limit_bytes;
  spec.log_file = dir_ / "p11ha.log";
  UseConfig(dir_ / "p11ha.toml", spec);
  f_ = P11ha();
  initialized_ = std::make_unique<Initialized>();
  session_ = OpenSession(f_);
  const CK_RV login = LoginUser(f_, session_);
  INFO("C_Login -> " << RvText(login));
  REQUIRE(login == CKR_OK);
  key_ = GenerateP256(f_, session_, /*on_token=*/true, "failover-sign");
  point_ = EcPoint(f_, session_, key_.public_key);
}

Cluster::~Cluster() {
  for (const std::string& so : sos_) WriteControl(so, "clear");
}

int Cluster::Count(int member, const char* function) const { return MemberCount(sos_[member], function); }

std::vector<int> Cluster::Counts(const char* function) const {
  std::vector<int> counts;
  for (int i = 0; i < kMembers; ++i) counts.push_back(Count(i, function));
  return counts;
}

int Cluster::AllCalls(int member) const {
  int total = 0;
  for (const std::string_view name : test_member::kFunctionNames) total += Count(member, std::string(name).c_str());
  return total;
}

int Cluster::MovedMember(const char* function, const std::vector<int>& before) const {
  int moved = -1;
  for (int i = 0; i < kMembers; ++i) {
    if (Count(i, function) == before[i]) continue;
    if (moved >= 0) return -1;
    moved = i;
  }
  return moved;
}

void Cluster::Fault(int member, const std::string& spec) const {
  INFO("writing " << sos_[member] << ".ctl");
  REQUIRE(WriteControl(sos_[member], spec));
}

void Cluster::Arm(Kind kind, int member, const std::string& function, int after, Armed* armed) const {
  armed->member = member;
  armed->function = function;
  armed->spec = FaultSpec(kind, function, after);
  armed->after = after;
  armed->count_before = Count(member, function.c_str());
  armed->at_ms = NowMs();
  Fault(member, armed->spec);
}

int Cluster::CallsSince(const Armed& armed) const {
  return armed.member < 0 ? 0 : Count(armed.member, armed.function.c_str()) - armed.count_before;
}

bool Cluster::Hit(const Armed& armed) const { return armed.member >= 0 && CallsSince(armed) > armed.after; }

std::string Cluster::ServedLog(int member) const { return dir_ / ("served-" + std::to_string(member + 1) + ".log"); }

bool Cluster::ServedSince(int member, const std::string& function, long long since) const {
  std::istringstream lines(ReadFile(ServedLog(member)));
  long long ms = 0;
  std::string name;
  while (lines >> ms >> name) {
    if (name == function && ms >= since) return true;
  }
  return false;
}

bool Cluster::SignsAgainOn(int member, long long since, std::string* seen) const {
  std::vector<CK_RV> answers;
  int unverified = 0;
  const bool back = WaitFor(
      [&] {
        const Digest digest = Sha256("again " + std::to_string(answers.size()));
        CK_RV rv = CKR_OK;
        const Bytes signature = SignDigest(f_, session_, key_.private_key, digest, &rv);
        answers.push_back(rv);
        if (rv != CKR_OK) return false;
        if (!VerifyP256(point_, digest, signature)) ++unverified;
        return ServedSince(member, "C_Sign", since);
      },
      kBackWithin);
  *seen += "signs through p11ha: " + Tally(answers) + "; " + std::to_string(unverified) +
           " signatures did not verify; member " + std::to_string(member + 1) +
           (back ? " signed again\n" : " did not sign again\n");
  return back && unverified == 0;
}

std::string Cluster::LogTail() const {
  const std::string log = ReadFile(dir_ / "p11ha.log");
  std::size_t pos = log.size();
  for (int lines = 0; lines < 40 && pos > 0 && pos != std::string::npos; ++lines) pos = log.rfind('\n', pos - 1);
  return pos == std::string::npos ? log : log.substr(pos);
}

}  // namespace p11ha::module_test::failover
