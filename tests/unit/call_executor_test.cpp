// SPDX-License-Identifier: Apache-2.0
#include "provider/member/call_executor.h"

#include <catch2/catch.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

namespace p11ha {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

// Jobs capture plain values only (CallJob), so shared state lives in statics.
std::atomic<int> inside{0};
std::atomic<int> most_inside{0};
std::atomic<bool> release_hung{false};
std::atomic<int> queued_job_ran{0};

CK_RV Busy(milliseconds how_long, CK_RV answer) {
  const int now_inside = inside.fetch_add(1) + 1;
  int seen = most_inside.load();
  while (now_inside > seen && !most_inside.compare_exchange_weak(seen, now_inside)) {
  }
  std::this_thread::sleep_for(how_long);
  inside.fetch_sub(1);
  return answer;
}

const char kQuickSite[] = "quick";
const char kSlowSite[] = "slow";

// A new call is answered beside the hung ones; once released, the abandoned workers end and
// the executor shuts down without leaving any behind.
void AnswersThenEndsAbandoned(CallExecutor& executor) {
  CHECK(executor.Run(CallJob::Of([] { return CKR_FUNCTION_FAILED; })) == CK_RV{CKR_FUNCTION_FAILED});
  release_hung = true;
  const auto until = Clock::now() + milliseconds(2000);
  while (executor.abandoned() != 0 && Clock::now() < until) std::this_thread::sleep_for(milliseconds(1));
  CHECK(executor.abandoned() == 0);
  CHECK(executor.Shutdown(Clock::now() + milliseconds(1000)) == 0);
}

TEST_CASE("call executor: every answer reaches its own caller, quick and slow calls alike") {
  CallExecutor executor(milliseconds(2000));
  // Enough calls for the executor to learn each site's usual duration and wait accordingly:
  // looking at once for quick ones, dozing first for slow ones.
  for (CK_RV i = 0; i < 200; ++i) {
    auto quick = executor.Run(CallJob::Of([i] { return i; }), nullptr, std::nullopt, kQuickSite);
    REQUIRE(quick == i);
  }
  for (CK_RV i = 0; i < 20; ++i) {
    const auto start = Clock::now();
    auto slow = executor.Run(CallJob::Of([i] { return Busy(milliseconds(2), i + 1000); }), nullptr, std::nullopt,
                             kSlowSite);
    REQUIRE(slow == i + 1000);
    CHECK(Clock::now() - start >= milliseconds(2));  // never an answer before the call gave it
  }
  // A call much slower than its site's usual is still waited for, and answered.
  auto late = executor.Run(CallJob::Of([] { return Busy(milliseconds(50), CKR_SIGNATURE_INVALID); }), nullptr,
                           std::nullopt, kSlowSite);
  CHECK(late == CK_RV{CKR_SIGNATURE_INVALID});
  CHECK(executor.abandoned() == 0);
}

TEST_CASE("call executor: callers on many threads each get their own answer") {
  CallExecutor executor(milliseconds(2000));
  std::atomic<int> wrong{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < 8; ++t) {
    callers.emplace_back([&, t] {
      for (CK_RV i = 0; i < 300; ++i) {
        const CK_RV expected = static_cast<CK_RV>(t) * 10000 + i;
        auto answer = executor.Run(CallJob::Of([expected] { return expected; }), nullptr, std::nullopt, kQuickSite);
        if (answer != expected) ++wrong;
      }
    });
  }
  for (auto& caller : callers) caller.join();
  CHECK(wrong == 0);
}

TEST_CASE("call executor: a call past the timeout is abandoned, its worker finishes alone") {
  release_hung = false;
  CallExecutor executor(milliseconds(100));
  const auto start = Clock::now();
  auto answer = executor.Run(CallJob::Of([] {
    while (!release_hung.load()) std::this_thread::sleep_for(milliseconds(1));
    return CKR_OK;
  }));
  const auto waited = Clock::now() - start;
  CHECK_FALSE(answer.has_value());
  CHECK(waited >= milliseconds(100));
  CHECK(waited < milliseconds(1000));
  CHECK(executor.abandoned() == 1);
  // Other calls go on, on another worker.
  AnswersThenEndsAbandoned(executor);
}

TEST_CASE("call executor: released waiters stop waiting at once; calls posted later are not released") {
  release_hung = false;
  CallExecutor executor(milliseconds(5000));
  std::vector<std::thread> callers;
  std::array<std::optional<CK_RV>, 2> answers{CK_RV{CKR_OK}, CK_RV{CKR_OK}};
  std::array<CallExecutor::Unanswered, 2> why{};
  std::array<Clock::duration, 2> waited{};
  for (std::size_t i = 0; i < 2; ++i)
    callers.emplace_back([&, i] {
      const auto start = Clock::now();
      answers[i] = executor.Run(CallJob::Of([] {
                                  while (!release_hung.load()) std::this_thread::sleep_for(milliseconds(1));
                                  return CKR_OK;
                                }),
                                nullptr, std::nullopt, nullptr, &why[i]);
      waited[i] = Clock::now() - start;
    });
  // Both callers are asleep in their wait (a slow call site is not looked for).
  std::this_thread::sleep_for(milliseconds(200));
  executor.ReleaseWaiters();
  for (auto& caller : callers) caller.join();
  for (std::size_t i = 0; i < 2; ++i) {
    CHECK_FALSE(answers[i].has_value());
    CHECK(why[i] == CallExecutor::Unanswered::kReleased);
    CHECK(waited[i] < milliseconds(2000));  // not the 5 s timeout
  }
  CHECK(executor.abandoned() == 2);
  // A call posted after the release is answered.
  AnswersThenEndsAbandoned(executor);
}

struct Tally {
  std::vector<int> written;  // on the heap: a write after the state was freed is what ASan sees
  std::atomic<bool> done{false};
};

TEST_CASE("call executor: an owning job's state outlives a caller that gave up, and is let go once it ran") {
  release_hung = false;
  CallExecutor executor(milliseconds(100));
  auto tally = std::make_shared<Tally>();
  std::weak_ptr<Tally> watch = tally;
  auto answer = executor.Run(CallJob::Owning(tally, [](Tally& state) {
    while (!release_hung.load()) std::this_thread::sleep_for(milliseconds(1));
    state.written.assign(1000, 7);
    state.done = true;
    return CKR_OK;
  }));
  REQUIRE_FALSE(answer.has_value());
  tally.reset();  // the caller's share goes, as its frame would
  CHECK_FALSE(watch.expired());  // the abandoned job still holds the state
  release_hung = true;
  const auto until = Clock::now() + milliseconds(2000);
  while (!watch.expired() && Clock::now() < until) std::this_thread::sleep_for(milliseconds(1));
  CHECK(watch.expired());  // and lets it go once it ran

  // A job that answers in time: the caller reads what it wrote, and the worker keeps no share.
  auto kept = std::make_shared<Tally>();
  auto answered = executor.Run(CallJob::Owning(kept, [](Tally& state) {
    state.written.assign(3, 1);
    return CKR_OK;
  }));
  REQUIRE(answered == CK_RV{CKR_OK});
  CHECK(kept->written.size() == 3);
  CHECK(kept.use_count() == 1);
  CHECK(executor.Shutdown(Clock::now() + milliseconds(1000)) == 0);
}

TEST_CASE("call executor: a reused worker runs each job with its own arguments, whatever ran before") {
  // One caller, one call at a time: the same worker takes every job, and a job's copy into it
  // covers only the bytes that job uses (CallJob). Jobs of every size and kind alternate, and
  // each answer depends on every byte the job captured.
  CallExecutor executor(milliseconds(2000));
  for (CK_RV i = 1; i <= 50; ++i) {
    std::array<CK_RV, 15> wide{};
    for (std::size_t k = 0; k < wide.size(); ++k) wide[k] = i * 100 + k;
    auto large = executor.Run(CallJob::Of([wide] {
      CK_RV sum = 0;
      for (CK_RV part : wide) sum = sum * 31 + part;
      return sum;
    }));
    CK_RV expected = 0;
    for (CK_RV part : wide) expected = expected * 31 + part;
    REQUIRE(large == expected);
    auto small = executor.Run(CallJob::Of([i] { return i; }));
    REQUIRE(small == i);
    auto kept = std::make_shared<Tally>();
    auto owning = executor.Run(CallJob::Owning(kept, [i](Tally& state) {
      state.written.assign(i, 1);
      return i + 7;
    }));
    REQUIRE(owning == i + 7);
    CHECK(kept->written.size() == i);
    CHECK(kept.use_count() == 1);  // the worker let go of it, and of no other job's
  }
  CHECK(executor.Shutdown(Clock::now() + milliseconds(1000)) == 0);
}

TEST_CASE("call executor: calls that share a serialisation lock never overlap, and wait for it") {
  inside = 0;
  most_inside = 0;
  CallExecutor executor(milliseconds(2000));
  auto store = std::make_shared<std::mutex>();
  std::vector<std::thread> callers;
  std::atomic<int> wrong{0};
  for (int t = 0; t < 4; ++t) {
    callers.emplace_back([&] {
      for (int i = 0; i < 10; ++i)
        if (executor.Run(CallJob::Of([] { return Busy(milliseconds(1), CKR_OK); }), store) != CK_RV{CKR_OK}) ++wrong;
    });
  }
  for (auto& caller : callers) caller.join();
  CHECK(wrong == 0);
  CHECK(most_inside == 1);
}

TEST_CASE("call executor: a job queued behind a stuck store lock is dropped, never run") {
  queued_job_ran = 0;
  CallExecutor executor(milliseconds(50));
  auto store = std::make_shared<std::mutex>();
  std::unique_lock stuck(*store);  // a call that holds the member's store and never returns
  const auto start = Clock::now();
  auto answer = executor.Run(CallJob::Of([] {
                               queued_job_ran.fetch_add(1);
                               return CKR_OK;
                             }),
                             store);
  const auto waited = Clock::now() - start;
  CHECK_FALSE(answer.has_value());
  // Queuing is allowed several call timeouts (CallExecutor::kQueueFactor is 3), not forever.
  CHECK(waited >= milliseconds(150));
  CHECK(waited < milliseconds(1000));
  CHECK(executor.abandoned() == 1);
  stuck.unlock();
  const auto until = Clock::now() + milliseconds(2000);
  while (executor.abandoned() != 0 && Clock::now() < until) std::this_thread::sleep_for(milliseconds(1));
  CHECK(executor.abandoned() == 0);
  CHECK(queued_job_ran == 0);  // the worker took the lock, saw the caller gone, and dropped the job
  CHECK(executor.Run(CallJob::Of([] { return CKR_OK; }), store) == CK_RV{CKR_OK});
  CHECK(executor.Shutdown(Clock::now() + milliseconds(1000)) == 0);
}

TEST_CASE("call executor: a job queued behind a busy store lock is answered once it runs") {
  // The store's holder finishes well within the queue bound: the queued call then gets the whole
  // call timeout from its own start, although its first deadline has long passed.
  CallExecutor executor(milliseconds(100));
  auto store = std::make_shared<std::mutex>();
  // Before the holder starts its 150 ms: the lock is then free no earlier than start + 150 ms.
  const auto start = Clock::now();
  std::thread holder;
  {
    std::unique_lock busy(*store);
    holder = std::thread([lock = std::move(busy)]() mutable {
      std::this_thread::sleep_for(milliseconds(150));
      lock.unlock();
    });
  }
  auto answer = executor.Run(CallJob::Of([] { return Busy(milliseconds(60), CKR_DATA_INVALID); }), store);
  const auto waited = Clock::now() - start;
  holder.join();
  CHECK(answer == CK_RV{CKR_DATA_INVALID});
  CHECK(waited >= milliseconds(210));
  CHECK(executor.abandoned() == 0);
}

TEST_CASE("call executor: sleeping and looking sides hand over without losing a signal") {
  // Calls that alternate between instant and slow make each side switch between looking and
  // sleeping, and pauses between calls let idle workers fall asleep: every switch is a chance
  // to lose a wake-up, which would show as a call that times out.
  CallExecutor executor(milliseconds(2000));
  std::atomic<int> wrong{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < 3; ++t) {
    callers.emplace_back([&, t] {
      for (CK_RV i = 0; i < 150; ++i) {
        const CK_RV expected = static_cast<CK_RV>(t) * 1000 + i;
        const bool slow = (i + t) % 7 == 0;
        auto answer = executor.Run(CallJob::Of([expected, slow] {
                                     if (slow) std::this_thread::sleep_for(std::chrono::microseconds(2500));
                                     return expected;
                                   }),
                                   nullptr, std::nullopt, kQuickSite);
        if (answer != expected) ++wrong;
        if (i % 25 == 0) std::this_thread::sleep_for(milliseconds(3));
      }
    });
  }
  for (auto& caller : callers) caller.join();
  CHECK(wrong == 0);
  CHECK(executor.abandoned() == 0);
  // Idle workers asleep by now are woken to end.
  std::this_thread::sleep_for(milliseconds(5));
  const auto start = Clock::now();
  CHECK(executor.Shutdown(Clock::now() + milliseconds(1000)) == 0);
  CHECK(Clock::now() - start < milliseconds(500));
}

}  // namespace
}  // namespace p11ha
