// SPDX-License-Identifier: Apache-2.0
#include "provider/member/call_executor.h"

#include <pthread.h>
#include <signal.h>

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <system_error>
#include <thread>
#include <utility>

namespace p11ha {

// Outlives the executor: abandoned workers report their end here after C_Finalize has gone.
struct CallExecutor::Shared {
  // The moving average of how long this member's calls take, in ns (all call sites).
  std::atomic<std::int64_t> typical_call_ns{0};
  std::mutex mu;
  std::condition_variable changed;
  std::size_t alive = 0;      // worker threads that exist
  std::size_t abandoned = 0;  // of those, inside a call nobody waits for any more
};

struct CallExecutor::Worker {
  enum class State { kIdle, kQueued, kRunning, kDone, kAbandoned, kStop };
  std::shared_ptr<Shared> shared;
  std::mutex mu;
  std::condition_variable cv;  // both directions: a job arrived, the job is done
  State state = State::kIdle;
  CallJob job;
  std::shared_ptr<std::mutex> serialise;
  std::chrono::steady_clock::time_point started;  // when the job left the queue (kRunning)
  std::chrono::steady_clock::duration took{};      // the member's time for the answered job (kDone)
  // Who sleeps on `cv`, so that a signal is sent only to a sleeper: a notify touches the
  // condition variable's memory, one more cache line moved between CPUs on every call.
  bool worker_asleep = false;
  bool caller_asleep = false;
  bool start_wanted = false;                       // the caller waits to hear that it started
  // Peeked at without the lock by a side that spins before it sleeps (SpinUntil); the state
  // under `mu` stays the truth.
  // Each on a cache line of its own: the side polling one must not pull away the line the
  // other side is writing the job or the answer into.
  alignas(64) std::atomic<bool> job_posted{false};
  alignas(64) std::atomic<bool> answer_posted{false};
  // This call's share of `on_cpu` (under `mu`): one for the call, one more while its caller looks.
  int cpus_counted = 0;
  // The caller looks for the answer: it takes the answer at once.
  std::atomic<bool> caller_looking{false};
  CK_RV rv = CKR_OK;
  std::thread thread;              // touched only by the executor, under idle_mu_
  std::atomic<bool> ended{false};  // set before the thread's last steps, which never block
};

CallExecutor::CallExecutor(std::chrono::milliseconds timeout)
    : timeout_(timeout), shared_(std::make_shared<Shared>()) {}

CallExecutor::~CallExecutor() { Shutdown(std::chrono::steady_clock::now() + timeout_); }

namespace {

// On a virtual machine, waking a thread whose vCPU went idle costs 100-250 us (the host has to
// run the vCPU again; docs/BENCHMARKS.md), more than a SoftHSM ECDSA signature, and every member
// call is a hand-off to a worker and back. So while a CPU is free, each side looks for the
// other's signal instead of sleeping: the caller for as long as its kind of call usually takes,
// the worker for the next call of a caller that was looking. It does not yield while it looks:
// on a busy machine a yield can cost a whole scheduler slice (milliseconds).
constexpr auto kSpin = std::chrono::microseconds(250);  // the shortest look
// Calls that usually take longer (a network HSM, RSA-4096) are waited for asleep: a wake-up is
// small beside them, and looking would hold a CPU for milliseconds.
constexpr std::int64_t kLooksBelowNs = 1'500'000;
// With no CPU free, a short look still pays for calls that answer in tens of microseconds (a
// digest, AES-GCM of a few KiB): a sleep would cost a wake-up several times as long. A worker
// looks this long for its next call; a caller twice the call's usual time, plus this.
constexpr auto kBriefLook = std::chrono::microseconds(20);
constexpr std::int64_t kBriefCallNs = 50'000;

// p11ha's threads that want a CPU for a hand-off: looking for a signal, or with a member call
// posted and not yet finished. Looking only helps while a CPU is free; on a machine whose CPUs
// are all busy it takes the time of the thread it waits for (two application threads signing
// on a 2-CPU machine).
std::atomic<int> on_cpu{0};

int UsableCpus() {
  static const int cpus = [] {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) return 1;
    return std::max(1, CPU_COUNT(&set));
  }();
  return cpus;
}

// An exponential moving average, weight 1/8 for the new sample.
void Average(std::atomic<std::int64_t>& average, std::chrono::steady_clock::duration sample) {
  const std::int64_t ns = std::chrono::duration_cast<std::chrono::nanoseconds>(sample).count();
  const std::int64_t old = average.load(std::memory_order_relaxed);
  average.store(old + (ns - old) / 8, std::memory_order_relaxed);
}

void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Looks for `flag` for up to `how_long`; whether a look is worth a CPU is the caller's choice.
void SpinUntil(const std::atomic<bool>& flag, std::chrono::microseconds how_long) {
  const auto until = std::chrono::steady_clock::now() + how_long;
  while (!flag.load(std::memory_order_acquire) && std::chrono::steady_clock::now() < until)
    for (int i = 0; i < 16 && !flag.load(std::memory_order_acquire); ++i) CpuRelax();
}

}  // namespace

void CallExecutor::Loop(std::shared_ptr<Worker> worker) {
  std::unique_lock lock(worker->mu, std::defer_lock);
  // Of `on_cpu`, what the last answer's caller gives back at once: it was looking for it.
  int taken_at_once = 0;
  for (;;) {
    // This look is not counted in `on_cpu`: the job it waits for is, from the moment it is posted.
    if (worker->shared->typical_call_ns.load(std::memory_order_relaxed) < kLooksBelowNs) {
      const bool cpu_free = on_cpu.load(std::memory_order_relaxed) - taken_at_once < UsableCpus();
      SpinUntil(worker->job_posted, cpu_free ? kSpin : kBriefLook);
    }
    lock.lock();
    worker->worker_asleep = true;
    worker->cv.wait(lock, [&] { return worker->state == Worker::State::kQueued || worker->state == Worker::State::kStop ||
                                       worker->state == Worker::State::kAbandoned; });
    worker->worker_asleep = false;
    if (worker->state != Worker::State::kQueued) break;
    worker->job_posted.store(false, std::memory_order_relaxed);
    CallJob job = worker->job;
    std::shared_ptr<std::mutex> serialise = std::move(worker->serialise);
    std::unique_lock<std::mutex> quirk;
    if (serialise) {
      lock.unlock();
      quirk = std::unique_lock(*serialise);
      lock.lock();
      if (worker->state == Worker::State::kAbandoned) break;  // the caller stopped queuing
    }
    // The caller's call timeout starts now: queuing behind other calls on the same token is
    // not this member being slow. The caller is woken for that only once it asked (Run).
    worker->state = Worker::State::kRunning;
    worker->started = std::chrono::steady_clock::now();
    if (worker->start_wanted) worker->cv.notify_all();
    lock.unlock();
    const CK_RV rv = job();
    // The member's own time, from the start of the call to its answer: what a caller waits
    // for at best. The caller's wait also holds its wake-up, which looking ahead avoids, so
    // averaging that would stop the looking for good once a few wake-ups were slow.
    const auto took = std::chrono::steady_clock::now() - worker->started;
    Average(worker->shared->typical_call_ns, took);
    if (quirk.owns_lock()) quirk.unlock();
    lock.lock();
    // Not released here: the CPU is now wanted by the caller, to take the answer (Run). Until
    // it has, this worker does not look for more work on a CPU the caller needs.
    if (worker->state == Worker::State::kAbandoned) break;
    worker->took = took;
    worker->rv = rv;
    worker->state = Worker::State::kDone;
    // Read before the answer is posted: a looking caller stops looking once it sees it.
    taken_at_once = worker->caller_looking.load(std::memory_order_relaxed) ? worker->cpus_counted : 0;
    const bool wake_caller = worker->caller_asleep;
    lock.unlock();
    // Signalled with the lock free, so that a caller who sees the flag does not then sleep on
    // the lock (a futex wait, and a wake-up) while this side still holds it.
    worker->answer_posted.store(true, std::memory_order_release);
    if (wake_caller) worker->cv.notify_all();
  }
  const bool was_abandoned = worker->state == Worker::State::kAbandoned;
  ReleaseCpu(*worker);  // a job dropped before it started, or one nobody takes
  lock.unlock();
  std::shared_ptr<Shared> shared = worker->shared;
  worker->ended.store(true);
  {
    std::lock_guard shared_lock(shared->mu);
    --shared->alive;
    if (was_abandoned) --shared->abandoned;
  }
  shared->changed.notify_all();
}

std::shared_ptr<CallExecutor::Worker> CallExecutor::TakeIdle() {
  {
    std::lock_guard lock(idle_mu_);
    if (!idle_.empty()) {
      auto worker = std::move(idle_.back());
      idle_.pop_back();
      return worker;
    }
  }
  auto worker = std::make_shared<Worker>();
  worker->shared = shared_;
  {
    std::lock_guard lock(shared_->mu);
    ++shared_->alive;
  }
  // Every signal blocked in the worker: the host's handlers run on its own threads only.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  std::lock_guard lock(idle_mu_);
  JoinEndedLocked();
  try {
    worker->thread = std::thread(Loop, worker);
  } catch (const std::system_error&) {
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    std::lock_guard shared_lock(shared_->mu);
    --shared_->alive;
    throw;
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  threads_.push_back(worker);
  return worker;
}

void CallExecutor::JoinEndedLocked() {
  // Abandoned workers that came back out of their member have ended; reap their threads.
  std::erase_if(threads_, [](const std::shared_ptr<Worker>& worker) {
    if (!worker->ended.load()) return false;
    worker->thread.join();
    return true;
  });
}

void CallExecutor::ReturnIdle(std::shared_ptr<Worker> worker) {
  {
    std::lock_guard lock(idle_mu_);
    if (!shut_down_) {
      idle_.push_back(std::move(worker));
      return;
    }
  }
  std::lock_guard lock(worker->mu);
  worker->state = Worker::State::kStop;
  worker->cv.notify_all();
}

void CallExecutor::ReleaseCpu(Worker& worker) {
  if (worker.cpus_counted == 0) return;
  on_cpu.fetch_sub(worker.cpus_counted, std::memory_order_relaxed);
  worker.cpus_counted = 0;
}

std::chrono::microseconds CallExecutor::LookFor(std::int64_t typical_ns) {
  if (typical_ns >= kLooksBelowNs) return {};
  const auto usual = std::chrono::microseconds(typical_ns * 2 / 1000);
  // Counting the call about to be posted: its worker takes a CPU too.
  if (on_cpu.load(std::memory_order_relaxed) + 1 < UsableCpus()) return kSpin + usual;
  if (typical_ns < kBriefCallNs) return kBriefLook + usual;
  return {};
}

std::atomic<std::int64_t>& CallExecutor::TypicalFor(const void* call_site) {
  return typical_ns_[(reinterpret_cast<std::uintptr_t>(call_site) >> 3) % kCallSites];
}

std::optional<CK_RV> CallExecutor::Run(const CallJob& job, const std::shared_ptr<std::mutex>& serialise,
                                       std::optional<std::chrono::milliseconds> answer_wait, const void* call_site) {
  std::atomic<std::int64_t>& typical = TypicalFor(call_site);
  const std::int64_t typical_ns = typical.load(std::memory_order_relaxed);
  const std::chrono::microseconds look = LookFor(typical_ns);
  const bool looking = look.count() > 0;
  std::shared_ptr<Worker> worker = TakeIdle();
  std::unique_lock lock(worker->mu);
  worker->job = job;
  worker->serialise = serialise;
  worker->start_wanted = false;
  worker->answer_posted.store(false, std::memory_order_relaxed);
  worker->state = Worker::State::kQueued;
  // One update of the shared count per call, for the call and the look together: every
  // update moves its cache line between CPUs.
  worker->cpus_counted = looking ? 2 : 1;
  worker->caller_looking.store(looking, std::memory_order_relaxed);
  on_cpu.fetch_add(worker->cpus_counted, std::memory_order_relaxed);
  const auto queued = std::chrono::steady_clock::now();
  const bool wake_worker = worker->worker_asleep;
  lock.unlock();
  worker->job_posted.store(true, std::memory_order_release);
  if (wake_worker) worker->cv.notify_all();
  if (looking) {
    SpinUntil(worker->answer_posted, look);
    worker->caller_looking.store(false, std::memory_order_relaxed);
  }
  const auto wait = answer_wait.value_or(timeout_);
  lock.lock();
  if (looking && worker->state != Worker::State::kDone) {
    // No answer yet: the caller sleeps, and gives back the CPU it counted for looking.
    worker->cpus_counted = 1;
    on_cpu.fetch_sub(1, std::memory_order_relaxed);
  }
  // Waiting for the member's store lock is bounded too: its holder may be stuck for good.
  const auto queue_bound = queued + kQueueFactor * timeout_;
  // One wake-up per call, when it is answered. The first deadline is the earliest the call can
  // time out; past it, the deadline follows from when the job started, and a job still queued
  // then is asked to say when it starts.
  auto deadline = queued + wait;
  bool awaiting_start = false;  // the job is queued and the worker will say when it starts
  for (;;) {
    const auto woken = [&] {
      return worker->state == Worker::State::kDone || (awaiting_start && worker->state != Worker::State::kQueued);
    };
    worker->caller_asleep = true;
    worker->cv.wait_until(lock, deadline, woken);
    worker->caller_asleep = false;
    if (worker->state == Worker::State::kDone) {
      // Averaged here, not by the worker: the caller reads the average at its next call.
      Average(typical, worker->took);
      ReleaseCpu(*worker);
      CK_RV rv = worker->rv;
      worker->state = Worker::State::kIdle;
      lock.unlock();
      ReturnIdle(std::move(worker));
      return rv;
    }
    awaiting_start = worker->state == Worker::State::kQueued;
    worker->start_wanted = awaiting_start;
    deadline = awaiting_start ? queue_bound : worker->started + wait;
    if (std::chrono::steady_clock::now() >= deadline) break;
  }
  worker->state = Worker::State::kAbandoned;
  ReleaseCpu(*worker);  // a hung member call holds no CPU
  worker->cv.notify_all();  // a job not yet started is dropped at once
  lock.unlock();
  std::lock_guard shared_lock(shared_->mu);
  ++shared_->abandoned;
  return std::nullopt;
}

std::size_t CallExecutor::Shutdown(std::chrono::steady_clock::time_point deadline) {
  std::vector<std::shared_ptr<Worker>> idle;
  {
    std::lock_guard lock(idle_mu_);
    shut_down_ = true;
    idle.swap(idle_);
  }
  for (auto& worker : idle) {
    std::lock_guard lock(worker->mu);
    worker->state = Worker::State::kStop;
    worker->cv.notify_all();
  }
  std::size_t left;
  {
    std::unique_lock lock(shared_->mu);
    shared_->changed.wait_until(lock, deadline, [&] { return shared_->alive == 0; });
    left = shared_->alive;
  }
  std::lock_guard lock(idle_mu_);
  JoinEndedLocked();
  // Still inside a hung member: left behind, as DESIGN.md "Failure" allows.
  for (auto& worker : threads_) worker->thread.detach();
  threads_.clear();
  return left;
}

std::size_t CallExecutor::abandoned() const {
  std::lock_guard lock(shared_->mu);
  return shared_->abandoned;
}

}  // namespace p11ha
