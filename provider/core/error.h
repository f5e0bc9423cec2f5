// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <p11-kit/pkcs11.h>

#include <stdexcept>
#include <string>

namespace p11ha {

// An error that already knows the CK_RV the application must see. Thrown where the decision is
// made; the ABI guard is the only place that catches it.
class CkError : public std::runtime_error {
 public:
  CkError(CK_RV rv, const std::string& what) : std::runtime_error(what), rv_(rv) {}
  CK_RV rv() const { return rv_; }

 private:
  CK_RV rv_;
};

[[noreturn]] inline void ThrowCk(CK_RV rv, const std::string& what) { throw CkError(rv, what); }

// Throws when a member answered anything but CKR_OK.
inline void CheckRv(CK_RV rv, const char* what) {
  if (rv != CKR_OK) throw CkError(rv, what);
}

// The PKCS#11 name of a return value, for logs and messages ("CKR_DEVICE_ERROR").
const char* RvName(CK_RV rv);

}  // namespace p11ha
