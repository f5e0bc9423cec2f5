// SPDX-License-Identifier: Apache-2.0
#include "provider/member/member_pool.h"

#include <algorithm>
#include <bit>
#include <chrono>
#include <limits>
#include <thread>
#include <random>

#include "provider/core/error.h"

namespace p11ha {

MemberPool::MemberPool(const config::Config& config)
    // Each process starts its rotation at a random member, so short-lived processes (one
    // pkcs11-tool run, one keygen) do not all land on the first member.
    : policy_(config.balancing), round_robin_(std::random_device()()) {
  if (config.members.size() > kMaxMembers) ThrowCk(CKR_GENERAL_ERROR, "too many members (at most 64)");
  for (std::size_t i = 0; i < config.members.size(); ++i) {
    members_.push_back(
        std::make_unique<Member>(i, config.members[i], std::chrono::milliseconds(config.call_timeout_ms)));
    weights_.push_back(config.members[i].weight == 0 ? 1 : config.members[i].weight);
  }
}

void MemberPool::LoadAll() {
  for (auto& member : members_) member->Load();
}

void MemberPool::ConnectAll() {
  // SoftHSM 2.6.1 misses a token whose file another process is rewriting (every C_Login
  // rewrites it) and sees it again only after a real C_Finalize/C_Initialize, which a shared
  // library gets only when every member using it lets go (research/softhsm-2.6.1.md §9, §10).
  // At start nobody is logged in and nothing is cached, so all members start over, briefly.
  constexpr int kAttempts = 3;
  for (int attempt = 1;; ++attempt) {
    for (auto& member : members_)
      if (member->Connect()) member->Activate();
    bool token_missing = std::any_of(members_.begin(), members_.end(), [](const auto& member) {
      return !member->up() && member->Status().last_error.starts_with("no token matches");
    });
    if (!token_missing || attempt == kAttempts) return;
    DisconnectAll();
    std::this_thread::sleep_for(std::chrono::milliseconds(50 * attempt));
  }
}

void MemberPool::DisconnectAll() {
  for (auto& member : members_) member->Disconnect();
}

void MemberPool::UseWorkers(bool workers) {
  for (auto& member : members_) member->UseWorkers(workers);
}

void MemberPool::StopWorkers(std::chrono::steady_clock::time_point deadline) {
  for (auto& member : members_) member->StopWorkers(deadline);
}

namespace {

// The index of the `n`th member (from 0) in `mask`, which has more than `n` members.
std::size_t NthMember(std::uint64_t mask, std::size_t n) {
  for (; n > 0; --n) mask &= mask - 1;
  return static_cast<std::size_t>(std::countr_zero(mask));
}

}  // namespace

std::uint64_t MemberPool::ServingMask(std::uint64_t allowed) const {
  std::uint64_t active = 0, standby = 0;
  for (std::size_t i = 0; i < members_.size(); ++i) {
    const std::uint64_t bit = std::uint64_t{1} << i;
    if ((allowed & bit) == 0 || !members_[i]->up()) continue;
    (members_[i]->standby() ? standby : active) |= bit;
  }
  return active != 0 ? active : standby;
}

std::vector<std::size_t> MemberPool::Serving(std::uint64_t allowed) const {
  std::vector<std::size_t> serving;
  for (std::uint64_t mask = ServingMask(allowed); mask != 0; mask &= mask - 1)
    serving.push_back(static_cast<std::size_t>(std::countr_zero(mask)));
  return serving;
}

std::optional<std::size_t> MemberPool::First(std::uint64_t allowed) const {
  const std::uint64_t serving = ServingMask(allowed);
  if (serving == 0) return std::nullopt;
  return static_cast<std::size_t>(std::countr_zero(serving));
}

// Works on a bitmask, not a list: it runs before every member call and should not allocate.
std::optional<std::size_t> MemberPool::Pick(std::uint64_t allowed) {
  const std::uint64_t serving = ServingMask(allowed);
  if (serving == 0) return std::nullopt;
  const auto count = static_cast<std::size_t>(std::popcount(serving));
  if (count == 1) return static_cast<std::size_t>(std::countr_zero(serving));
  switch (policy_) {
    case config::BalancingPolicy::kPriority:
      return static_cast<std::size_t>(std::countr_zero(serving));
    case config::BalancingPolicy::kRoundRobin:
      return NthMember(serving, round_robin_.fetch_add(1, std::memory_order_relaxed) % count);
    case config::BalancingPolicy::kLeastBusy:
      break;
  }
  // Least busy by in-flight work per unit of weight; ties rotate so idle members share work.
  const std::size_t start = round_robin_.fetch_add(1, std::memory_order_relaxed) % count;
  std::size_t best = NthMember(serving, start);
  double best_load = std::numeric_limits<double>::max();
  for (std::size_t k = 0; k < count; ++k) {
    const std::size_t i = NthMember(serving, (start + k) % count);
    const double load = static_cast<double>(members_[i]->in_flight.load(std::memory_order_relaxed)) / weights_[i];
    if (load < best_load) {
      best_load = load;
      best = i;
    }
  }
  return best;
}

}  // namespace p11ha
