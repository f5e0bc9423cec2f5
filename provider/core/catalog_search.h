// SPDX-License-Identifier: Apache-2.0
// Finds answered from p11ha's object catalog instead of the members (find.cpp). A member token
// such as SoftHSM reads every object it holds for each C_FindObjectsInit, so a find costs
// what the token's size costs; the catalog answers from memory.
#pragma once

#include <p11-kit/pkcs11.h>

#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace p11ha {

struct ObjectFacts;

// What applications search by, beyond ObjectFacts. nullopt: the object has no such attribute
// (SoftHSM's data objects have no CKA_ID), which a template naming it never matches.
struct SearchKeys {
  std::optional<CK_KEY_TYPE> key_type;
  std::optional<std::string> label;
  std::optional<std::vector<CK_BYTE>> id;
};

// A find template the catalog can answer: only CKA_CLASS, CKA_KEY_TYPE, CKA_TOKEN, CKA_PRIVATE,
// CKA_LABEL and CKA_ID, each once and in its exact size. Anything else goes to the members,
// which also give the CK_RV the spec requires for a malformed template.
class SearchTemplate {
 public:
  static std::optional<SearchTemplate> Parse(std::span<const CK_ATTRIBUTE> match);
  bool Matches(const ObjectFacts& facts, const SearchKeys& keys) const;
  // Whether it names what can change after creation (CKA_LABEL, CKA_ID), possibly by another
  // process: such answers are checked on a member before they are given.
  bool NamesChangeable() const { return label_.has_value() || id_.has_value(); }

 private:
  std::optional<CK_OBJECT_CLASS> object_class_;
  std::optional<CK_KEY_TYPE> key_type_;
  std::optional<bool> token_;
  std::optional<bool> private_;
  std::optional<std::string> label_;
  std::optional<std::vector<CK_BYTE>> id_;
};

// The freshness rule of catalog answers (README "Finding objects"). The catalog always knows
// what this process did through p11ha. Objects other processes create or destroy reach it by a
// listing: one search for every object on every serving member, adopting the new ones and
// dropping the ones gone. A catalog answer is allowed while the last complete listing began
// less than max_age ago, covered exactly the members serving now in their current instances,
// and the login state has not changed since.
class CatalogFreshness {
 public:
  using Clock = std::chrono::steady_clock;
  // (member index, epoch) of every serving member, in index order.
  using Serving = std::vector<std::pair<std::size_t, std::uint64_t>>;

  explicit CatalogFreshness(std::chrono::milliseconds max_age) : max_age_(max_age) {}

  bool enabled() const { return max_age_.count() > 0; }
  bool Fresh(const Serving& serving, std::uint64_t login_generation) const;
  // One listing at a time: false when another thread is listing (the caller asks the members).
  bool BeginListing();
  void EndListing(bool complete, Serving serving, std::uint64_t login_generation, Clock::time_point began);

 private:
  const std::chrono::milliseconds max_age_;
  mutable std::mutex mu_;  // a leaf lock: never held across a member call
  bool listing_ = false;
  bool complete_ = false;
  Serving serving_;
  std::uint64_t login_generation_ = 0;
  Clock::time_point began_{};
};

}  // namespace p11ha
