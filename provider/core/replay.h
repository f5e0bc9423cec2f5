// SPDX-License-Identifier: Apache-2.0
// What an operation keeps so that it can start again on another member when its member fails
// (DESIGN.md "Failure"): its mechanism, copied deeply, and the input fed to it so far.
#pragma once

#include <p11-kit/pkcs11.h>

#include <cstddef>
#include <optional>
#include <span>
#include <vector>

namespace p11ha {

// Mechanisms whose parameter, if any, holds no pointer (an IV, a flat structure, a length): it
// can be copied and compared as bytes.
bool FlatParameter(CK_MECHANISM_TYPE type);

// A CK_MECHANISM that outlives the application's: C_*Init's arguments are only valid during
// the call, and a replay happens later. Parameters that are plain bytes are copied; the
// parameter structures with pointers that operations use (GCM, OAEP) are copied deeply.
// Any other structured parameter cannot be copied safely, and the operation cannot move.
class MechanismCopy {
 public:
  // Nothing when the mechanism's parameter is of a kind that cannot be copied. A mechanism
  // without a parameter is copied without allocating: this runs at the start of every
  // operation.
  static std::optional<MechanismCopy> Of(const CK_MECHANISM& mechanism);

  // Moving keeps the parameter's buffers, so the pointers into them stay valid.
  MechanismCopy(MechanismCopy&&) noexcept = default;
  MechanismCopy& operator=(MechanismCopy&&) noexcept = default;
  MechanismCopy(const MechanismCopy&) = delete;
  MechanismCopy& operator=(const MechanismCopy&) = delete;

  // PKCS#11's C_*Init take a non-const pointer but do not write through it.
  CK_MECHANISM_PTR get() const { return const_cast<CK_MECHANISM_PTR>(&mechanism_); }
  CK_MECHANISM_TYPE type() const { return mechanism_.mechanism; }

 private:
  MechanismCopy() = default;
  std::vector<CK_BYTE>& Keep(const void* data, std::size_t size);

  CK_MECHANISM mechanism_{};
  std::vector<CK_BYTE> parameter_;
  std::vector<std::vector<CK_BYTE>> nested_;  // buffers the parameter structure points into
};

// The input of a multi-part operation, in memory that is locked against swapping where the
// system allows it and wiped when released: it may be a secret the application encrypts.
class ReplayInput {
 public:
  ReplayInput() = default;
  ~ReplayInput();
  ReplayInput(ReplayInput&& other) noexcept;
  ReplayInput& operator=(ReplayInput&& other) noexcept;
  ReplayInput(const ReplayInput&) = delete;
  ReplayInput& operator=(const ReplayInput&) = delete;

  // False (and the input dropped) when it would grow past `limit` bytes.
  bool Append(std::span<const CK_BYTE> part, std::size_t limit);
  void Clear();
  std::span<const CK_BYTE> bytes() const { return {data_, size_}; }
  bool empty() const { return size_ == 0; }

 private:
  CK_BYTE* data_ = nullptr;
  std::size_t size_ = 0;
  std::size_t capacity_ = 0;
};

}  // namespace p11ha
