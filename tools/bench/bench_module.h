// SPDX-License-Identifier: Apache-2.0
// The measured side's access to a PKCS#11 module: loaded by path through its C ABI, as an
// application loads p11ha, and used on one token found by label.
#pragma once

#include <p11-kit/pkcs11.h>

#include <string>
#include <vector>

namespace p11ha::bench {

class Module {
 public:
  explicit Module(const std::string& path, bool no_library_threads = false);
  ~Module();
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  CK_FUNCTION_LIST* operator->() const { return f_; }

  CK_SLOT_ID SlotOf(const std::string& label);

  static void Check(CK_RV rv, const char* what);
  static std::string Hex(CK_RV rv);

 private:
  void* library_ = nullptr;
  CK_FUNCTION_LIST* f_ = nullptr;
};

CK_SESSION_HANDLE OpenSession(Module& m, CK_SLOT_ID slot);
void Login(Module& m, CK_SESSION_HANDLE session, const std::string& pin);

// Every object matching `match`, by one whole C_FindObjectsInit/C_FindObjects/C_FindObjectsFinal.
std::vector<CK_OBJECT_HANDLE> FindAll(Module& m, CK_SESSION_HANDLE session, std::vector<CK_ATTRIBUTE> match);

// The P-256 curve, DER-encoded, for CKA_EC_PARAMS.
inline constexpr CK_BYTE kP256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};

inline CK_ATTRIBUTE LabelAttribute(const std::string& label) {
  return CK_ATTRIBUTE{CKA_LABEL, const_cast<char*>(label.data()), label.size()};
}

}  // namespace p11ha::bench
