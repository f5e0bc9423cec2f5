// SPDX-License-Identifier: Apache-2.0
#include "provider/member/call_executor.h"

#include "provider/member/call_looks.h"

#include <pthread.h>
#include <signal.h>

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

// One call's hand-off lives in one atomic word (`state`): the caller posts the job and takes the
// answer, the worker takes the job and posts the answer, each with one atomic operation on a
// cache line that holds the answer too. Until a side sleeps, no lock is taken: a lock is one
// more cache line moving between the CPUs, and it used to move three times per call.
// A side about to sleep says so in the word (under `mu`, with a compare-exchange); the other
// side sees that in what its own transition returns, and only then takes `mu` and signals.
struct CallExecutor::Worker {
  // The low bits: where the call stands.
  static constexpr std::uint32_t kIdle = 0;       // a new worker; after that, kDone
  static constexpr std::uint32_t kQueued = 1;     // posted; running, unless it waits for a lock
  static constexpr std::uint32_t kRunning = 2;    // holds its lock, inside the member since `started`
  static constexpr std::uint32_t kDone = 3;       // `rv` and `took` hold the answer, or it was taken
  static constexpr std::uint32_t kAbandoned = 4;  // the caller gave up; the worker ends after it
  static constexpr std::uint32_t kStop = 5;       // the executor ends this idle worker
  static constexpr std::uint32_t kPhase = 0xf;
  // The high bits: who waits, and how.
  static constexpr std::uint32_t kWorkerAsleep = 1u << 4;   // on `cv`, for a job
  static constexpr std::uint32_t kCallerAsleep = 1u << 5;   // on `cv`, for the answer
  static constexpr std::uint32_t kStartWanted = 1u << 6;    // ... or for the start of a queued job
  static constexpr std::uint32_t kCallerLooking = 1u << 7;  // the caller takes the answer at once
  static constexpr std::uint32_t kSerialised = 1u << 8;     // the job comes with `serialise`
  static constexpr std::uint32_t kOwning = 1u << 9;  // the job holds state (CallJob::Owning) to let go of
  static std::uint32_t Phase(std::uint32_t word) { return word & kPhase; }

  // Moves the phase from `from` to `to`, keeping the other bits; returns the word it replaced,
  // whose phase is not `from` when the move did not happen.
  std::uint32_t Move(std::uint32_t from, std::uint32_t to) {
    // Acquire on failure as well: a caller that finds kDone instead reads the answer next.
    std::uint32_t word = state.load(std::memory_order_acquire);
    while (Phase(word) == from &&
           !state.compare_exchange_weak(word, (word & ~kPhase) | to, std::memory_order_acq_rel, std::memory_order_acquire)) {
    }
    return word;
  }

  // Wakes the side that said, in `replaced`, that it sleeps. Taking `mu` first means that side is
  // either inside its wait or has not yet checked the word, so the signal is not lost.
  void WakeIf(std::uint32_t replaced, std::uint32_t asleep) {
    if ((replaced & asleep) == 0) return;
    { std::lock_guard lock(mu); }
    cv.notify_all();
  }

  // Sleeps on `cv` until `woken(state)` or `deadline` (none: no limit), having said so with
  // `asleep`; returns the word then. Never sleeps when the word already wakes it.
  template <typename Woken>
  std::uint32_t Sleep(std::uint32_t asleep, std::optional<std::chrono::steady_clock::time_point> deadline,
                      Woken woken) {
    std::unique_lock lock(mu);
    std::uint32_t word = state.load(std::memory_order_acquire);
    while (!woken(word)) {
      if (state.compare_exchange_weak(word, word | asleep, std::memory_order_acq_rel, std::memory_order_acquire)) {
        const auto awake = [&] { return woken(state.load(std::memory_order_acquire)); };
        if (deadline)
          cv.wait_until(lock, *deadline, awake);
        else
          cv.wait(lock, awake);
        return state.fetch_and(~asleep, std::memory_order_acq_rel) & ~asleep;
      }
    }
    return word;
  }

  // Kept off the lines the caller writes on every call (the hand-off below), so that reading
  // them moves nothing between CPUs: `shared` never changes, and `serialise` and `started`
  // change only for a call that queues for its member's store lock.
  std::shared_ptr<Shared> shared;
  std::shared_ptr<std::mutex> serialise;          // set, and read, only for a call that has one
  std::chrono::steady_clock::time_point started;  // when a queued job got its lock (kRunning)
  // The hand-off: what both sides poll, the answer, and the head of the job, all on one cache
  // line, so that posting a job and posting its answer each move one line between the CPUs
  // (two, when the job's arguments run past it).
  alignas(64) std::atomic<std::uint32_t> state{kIdle};
  int cpus_busy_at_post = 0;                   // `on_cpu` as the job was posted, the job included
  CK_RV rv = CKR_OK;                           // the answer (kDone)
  std::chrono::steady_clock::duration took{};  // the member's time for it (kDone)
  // Written by the caller before it posts, and run in place by the worker after: it stays
  // untouched until the answer is taken.
  CallJob job;
  // This call's share of `on_cpu`, kept by its caller: one for the call, one more while the
  // caller looks for the answer. Away from the lines the worker reads.
  alignas(64) int cpus_counted = 0;
  std::thread thread;              // touched only by the executor, under idle_mu_
  std::atomic<bool> ended{false};  // set before the thread's last steps, which never block
  std::mutex mu;               // only to sleep: never held while a side works
  std::condition_variable cv;  // both directions: a job arrived, the job is done or started
};

static_assert(std::atomic<std::uint32_t>::is_always_lock_free);

CallExecutor::CallExecutor(std::chrono::milliseconds timeout)
    : timeout_(timeout), shared_(std::make_shared<Shared>()) {}

CallExecutor::~CallExecutor() { Shutdown(std::chrono::steady_clock::now() + timeout_); }

namespace {

// Whether and how long each side looks for the other's signal: call_looks.h.

// p11ha's threads that want a CPU for a hand-off: looking for a signal, or with a member call
// posted and not yet finished. Looking only helps while a CPU is free; on a machine whose CPUs
// are all busy it takes the time of the thread it waits for (two application threads signing
// on a 2-CPU machine).
std::atomic<int> on_cpu{0};
// What a call counts in `on_cpu` while its caller looks for the answer.
constexpr int kCallAndLook = 2;

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

// Looks for `done(state)` until `until`; returns the word last seen. Whether a look is worth a
// CPU is the caller's choice. A time point, not a length: a caller has just read the clock.
template <typename Done>
std::uint32_t LookUntil(const std::atomic<std::uint32_t>& state, std::chrono::steady_clock::time_point until,
                        Done done) {
  std::uint32_t word = state.load(std::memory_order_acquire);
  if (done(word)) return word;
  do {
    for (int i = 0; i < 16; ++i) {
      CpuRelax();
      word = state.load(std::memory_order_acquire);
      if (done(word)) return word;
    }
  } while (std::chrono::steady_clock::now() < until);
  return word;
}

}  // namespace

void CallExecutor::Loop(std::shared_ptr<Worker> worker) {
  using W = Worker;
  call_looks::AdoptProcessCpus();
  // The last answer stays kDone until its caller has taken it.
  const auto job_posted = [](std::uint32_t word) { return W::Phase(word) != W::kIdle && W::Phase(word) != W::kDone; };
  // `on_cpu` as the last job was posted, and what of it that job's caller gives back at once
  // (it was looking for the answer). Read with the job rather than afresh: every caller updates
  // `on_cpu`, and each read here would move that line to this CPU and back.
  int busy_at_post = 0;
  int taken_at_once = 0;
  std::uint32_t word;
  for (;;) {
    // This look is not counted in `on_cpu`: the job it waits for is, from the moment it is posted.
    word = worker->state.load(std::memory_order_acquire);
    if (!job_posted(word)) {
      const auto look = call_looks::WorkerLook(worker->shared->typical_call_ns.load(std::memory_order_relaxed),
                                               busy_at_post, taken_at_once, call_looks::ProcessCpus());
      if (look.count() > 0) word = LookUntil(worker->state, std::chrono::steady_clock::now() + look, job_posted);
    }
    if (!job_posted(word))
      word = worker->Sleep(W::kWorkerAsleep, std::nullopt, job_posted);
    if (W::Phase(word) != W::kQueued) break;  // stopped, or dropped before it started
    busy_at_post = worker->cpus_busy_at_post;
    const bool owning = (word & W::kOwning) != 0;
    // A job without a lock runs from the moment it is posted, and stays kQueued: one move of
    // the shared cache line less per call. The caller times it from its posting.
    std::uint32_t running = W::kQueued;
    std::unique_lock<std::mutex> quirk;
    if ((word & W::kSerialised) != 0) {
      const std::shared_ptr<std::mutex> serialise = std::move(worker->serialise);
      quirk = std::unique_lock(*serialise);
      // The caller's call timeout starts now: queuing behind other calls on the same token is
      // not this member being slow. The caller is woken for that only once it asked (Run).
      worker->started = std::chrono::steady_clock::now();
      word = worker->Move(W::kQueued, W::kRunning);
      if (W::Phase(word) != W::kQueued) break;  // the caller stopped queuing
      worker->WakeIf(word, W::kStartWanted);
      running = W::kRunning;
    }
    const auto began = std::chrono::steady_clock::now();
    const CK_RV rv = worker->job();
    if (owning) worker->job.ReleaseState();
    // The member's own time, from the start of the call to its answer: what a caller waits
    // for at best. The caller's wait also holds its wake-up, which looking ahead avoids, so
    // averaging that would stop the looking for good once a few wake-ups were slow.
    const auto took = std::chrono::steady_clock::now() - began;
    Average(worker->shared->typical_call_ns, took);
    if (quirk.owns_lock()) quirk.unlock();
    // Written before the answer is posted, and read by the caller only once it is; a caller
    // that gave up reads neither.
    worker->took = took;
    worker->rv = rv;
    // The CPU is not given back here: the caller now wants it, to take the answer (Run). Until
    // it has, this worker does not look for more work on a CPU the caller needs.
    word = worker->Move(running, W::kDone);
    if (W::Phase(word) != running) break;  // abandoned: nobody takes this answer
    taken_at_once = (word & W::kCallerLooking) != 0 ? kCallAndLook : 0;
    worker->WakeIf(word, W::kCallerAsleep);
  }
  // Only its caller moves a job to kAbandoned, and nothing moves it on from there.
  const bool was_abandoned = W::Phase(worker->state.load(std::memory_order_acquire)) == W::kAbandoned;
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
  worker->WakeIf(worker->state.exchange(Worker::kStop, std::memory_order_acq_rel), Worker::kWorkerAsleep);
}

void CallExecutor::ReleaseCpu(Worker& worker) {
  if (worker.cpus_counted == 0) return;
  on_cpu.fetch_sub(worker.cpus_counted, std::memory_order_relaxed);
  worker.cpus_counted = 0;
}

std::chrono::microseconds CallExecutor::LookFor(std::int64_t typical_ns) {
  return call_looks::CallerLook(typical_ns, on_cpu.load(std::memory_order_relaxed), call_looks::ProcessCpus());
}

std::atomic<std::int64_t>& CallExecutor::TypicalFor(const void* call_site) {
  return typical_ns_[(reinterpret_cast<std::uintptr_t>(call_site) >> 3) % kCallSites];
}

std::optional<CK_RV> CallExecutor::Run(const CallJob& job, const std::shared_ptr<std::mutex>& serialise,
                                       std::optional<std::chrono::milliseconds> answer_wait, const void* call_site,
                                       Unanswered* unanswered) {
  using W = Worker;
  // Read before the job is posted: a release that comes after it concerns this call.
  const std::uint64_t releases = releases_.load(std::memory_order_acquire);
  const auto released = [&] { return releases_.load(std::memory_order_acquire) != releases; };
  std::atomic<std::int64_t>& typical = TypicalFor(call_site);
  const std::chrono::microseconds look = LookFor(typical.load(std::memory_order_relaxed));
  const bool looking = look.count() > 0;
  std::shared_ptr<Worker> worker = TakeIdle();
  worker->job = job;
  const bool queues = serialise != nullptr;  // the job may wait for the member's store lock
  if (queues) worker->serialise = serialise;
  // One update of the shared count per call, for the call and the look together: every
  // update moves its cache line between CPUs.
  worker->cpus_counted = looking ? kCallAndLook : 1;
  worker->cpus_busy_at_post = on_cpu.fetch_add(worker->cpus_counted, std::memory_order_relaxed) + worker->cpus_counted;
  const auto queued = std::chrono::steady_clock::now();
  // An idle worker's word holds the last answer and perhaps the worker's sleep; this replaces
  // it whole, and wakes the worker if it sleeps.
  const std::uint32_t idle =
      worker->state.exchange(W::kQueued | (looking ? W::kCallerLooking : 0) | (queues ? W::kSerialised : 0) |
                                 (job.owns_state() ? W::kOwning : 0),
                             std::memory_order_acq_rel);
  worker->WakeIf(idle, W::kWorkerAsleep);
  const auto done = [](std::uint32_t word) { return W::Phase(word) == W::kDone; };
  if (looking) {
    if (done(LookUntil(worker->state, queued + look, done))) return TakeAnswer(std::move(worker), typical);
    // No answer yet: the caller sleeps, and gives back the CPU it counted for looking. Cleared
    // with the answer possibly posted meanwhile; the worker then counted the look as given
    // back at once, and so does this caller.
    if (!done(worker->state.fetch_and(~W::kCallerLooking, std::memory_order_acq_rel))) {
      worker->cpus_counted = 1;
      on_cpu.fetch_sub(1, std::memory_order_relaxed);
    }
  }
  const auto wait = answer_wait.value_or(timeout_);
  // Waiting for the member's store lock is bounded too: its holder may be stuck for good.
  const auto queue_bound = queued + kQueueFactor * timeout_;
  // One wake-up per call, when it is answered. The first deadline is the earliest the call can
  // time out; past it, the deadline follows from when the job started, and a job still queued
  // then is asked to say when it starts.
  auto deadline = queued + wait;
  bool awaiting_start = false;  // the job is queued and the worker will say when it starts
  for (;;) {
    const auto woken = [&](std::uint32_t word) {
      return done(word) || (awaiting_start && W::Phase(word) != W::kQueued) || released();
    };
    const std::uint32_t word =
        worker->Sleep(W::kCallerAsleep | (awaiting_start ? W::kStartWanted : 0), deadline, woken);
    if (done(word)) return TakeAnswer(std::move(worker), typical);
    if (released()) break;
    awaiting_start = queues && W::Phase(word) == W::kQueued;
    deadline = awaiting_start ? queue_bound : (queues ? worker->started : queued) + wait;
    if (std::chrono::steady_clock::now() >= deadline) break;
  }
  // Counted before the job is let go, so that a worker coming back out of the member at once
  // never finds the count without it.
  {
    std::lock_guard shared_lock(shared_->mu);
    ++shared_->abandoned;
  }
  std::uint32_t word = worker->Move(W::kQueued, W::kAbandoned);
  if (W::Phase(word) == W::kRunning) word = worker->Move(W::kRunning, W::kAbandoned);
  if (done(word)) {  // answered as the time ran out
    {
      std::lock_guard shared_lock(shared_->mu);
      --shared_->abandoned;
    }
    return TakeAnswer(std::move(worker), typical);
  }
  ReleaseCpu(*worker);  // a hung member call holds no CPU
  if (unanswered != nullptr) *unanswered = released() ? Unanswered::kReleased : Unanswered::kTimedOut;
  return std::nullopt;
}

void CallExecutor::ReleaseWaiters() {
  releases_.fetch_add(1, std::memory_order_acq_rel);
  // A waiting caller sleeps on its worker's `cv`, having checked `releases_` under the
  // worker's `mu`: taking `mu` here first means it either sees the new count or is woken.
  std::lock_guard lock(idle_mu_);
  for (auto& worker : threads_) {
    { std::lock_guard sleep_lock(worker->mu); }
    worker->cv.notify_all();
  }
}

CK_RV CallExecutor::TakeAnswer(std::shared_ptr<Worker> worker, std::atomic<std::int64_t>& typical) {
  // Averaged here, not by the worker: the caller reads the average at its next call.
  Average(typical, worker->took);
  ReleaseCpu(*worker);
  const CK_RV rv = worker->rv;
  // The word stays kDone, which the worker waits past, until the next call replaces it whole.
  ReturnIdle(std::move(worker));
  return rv;
}

std::size_t CallExecutor::Shutdown(std::chrono::steady_clock::time_point deadline) {
  std::vector<std::shared_ptr<Worker>> idle;
  {
    std::lock_guard lock(idle_mu_);
    shut_down_ = true;
    idle.swap(idle_);
  }
  for (auto& worker : idle)
    worker->WakeIf(worker->state.exchange(Worker::kStop, std::memory_order_acq_rel), Worker::kWorkerAsleep);
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
