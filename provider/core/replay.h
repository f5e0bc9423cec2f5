// SPDX-License-Identifier: Apache-2.0
// What an operation keeps so that it can start again on another member when its member fails
// (DESIGN.md "Failure"): its mechanism, copied deeply, and the input fed to it so far.
#pragma once

#include <p11-kit/pkcs11.h>

#include <cstddef>
#include <memory>
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
  // Null when the mechanism's parameter is of a kind that cannot be copied. One allocation:
  // this runs at the start of every operation.
  static std::shared_ptr<MechanismCopy> Of(const CK_MECHANISM& mechanism);

  CK_MECHANISM_PTR get() { return &mechanism_; }
  CK_MECHANISM_TYPE type() const { return mechanism_.mechanism; }

 private:
  // Only Of makes one; the key lets it use make_shared.
  struct MadeByOf {
    explicit MadeByOf() = default;
  };

 public:
  explicit MechanismCopy(MadeByOf) {}

 private:
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
