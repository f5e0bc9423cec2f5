// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "config/config.h"
#include "provider/member/member.h"

namespace p11ha {

// The configured members, in priority order, and the balancing policy over them.
class MemberPool {
 public:
  explicit MemberPool(const config::Config& config);

  void LoadAll();     // throws CkError when a module cannot be loaded
  void ConnectAll();  // at start nobody is logged in, so reachable members serve at once
  void DisconnectAll();
  void UseWorkers(bool workers);
  // C_Finalize: ends every member's call workers, waiting for stuck ones until `deadline`.
  void StopWorkers(std::chrono::steady_clock::time_point deadline);

  std::size_t size() const { return members_.size(); }
  Member& at(std::size_t index) { return *members_[index]; }

  // The members that may serve now: active members that are up, or, when none is, standby
  // members that are up. `allowed` (a bitmask by index) narrows the choice, e.g. to holders.
  std::vector<std::size_t> Serving(std::uint64_t allowed = ~std::uint64_t{0}) const;
  // The same members as a bitmask by index.
  std::uint64_t ServingMask(std::uint64_t allowed = ~std::uint64_t{0}) const;
  // The serving member of lowest index, or nullopt when none is up.
  std::optional<std::size_t> First(std::uint64_t allowed = ~std::uint64_t{0}) const;

  // One serving member chosen by the balancing policy, or nullopt when none is up.
  std::optional<std::size_t> Pick(std::uint64_t allowed = ~std::uint64_t{0});

  static constexpr std::size_t kMaxMembers = 64;

 private:
  config::BalancingPolicy policy_;
  std::vector<std::unique_ptr<Member>> members_;
  std::vector<unsigned> weights_;
  std::atomic<std::uint64_t> round_robin_{0};
};

// Counts an operation against a member for least-busy balancing while it lives.
class InFlight {
 public:
  InFlight() = default;
  explicit InFlight(Member& member) : member_(&member) { member_->in_flight.fetch_add(1, std::memory_order_relaxed); }
  ~InFlight() { Release(); }
  InFlight(InFlight&& other) noexcept : member_(std::exchange(other.member_, nullptr)) {}
  InFlight& operator=(InFlight&& other) noexcept {
    if (this != &other) {
      Release();
      member_ = std::exchange(other.member_, nullptr);
    }
    return *this;
  }
  void Release() {
    if (member_ != nullptr) member_->in_flight.fetch_sub(1, std::memory_order_relaxed);
    member_ = nullptr;
  }

 private:
  Member* member_ = nullptr;
};

}  // namespace p11ha
