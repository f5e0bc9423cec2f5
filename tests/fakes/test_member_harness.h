// SPDX-License-Identifier: Apache-2.0
// Helpers for the test member's own tests: temp dirs, staging, loading copies, PKCS#11 calls.
#pragma once

#include <p11-kit/pkcs11.h>

#include <memory>
#include <string>
#include <vector>

#include "test_member.h"

namespace p11ha::test_member::testing {

class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};
CommandResult RunCommand(const std::string& command);
std::string Quote(const std::string& text);

// stage-test-members.sh DIR N <built test member>; fails the test on error.
void StageMembers(const std::string& dir, int count);

void WriteFile(const std::string& path, const std::string& text);
// Write then rename, as another process should.
void WriteFileAtomically(const std::string& path, const std::string& text);
std::string ReadFile(const std::string& path);

// One dlopen'ed copy of the test member.
class LoadedMember {
 public:
  explicit LoadedMember(const std::string& so_path);
  ~LoadedMember();
  LoadedMember(const LoadedMember&) = delete;
  LoadedMember& operator=(const LoadedMember&) = delete;

  CK_FUNCTION_LIST* f() const { return functions_; }
  const std::string& path() const { return path_; }
  int Count(const char* function) const { return count_(function); }
  void ResetCounts() const { reset_counts_(); }
  void SetFault(const char* spec) const { set_fault_(spec); }
  void DumpCounts() const { dump_counts_(); }

  CK_RV Initialize() const;
  CK_RV Finalize() const { return functions_->C_Finalize(nullptr); }
  std::vector<CK_SLOT_ID> Slots() const;
  std::vector<std::string> TokenLabels() const;
  CK_SLOT_ID SlotOf(const std::string& label) const;
  // An R/W session logged in as the user (PIN 1234).
  CK_SESSION_HANDLE OpenUserSession(const std::string& label) const;

 private:
  std::string path_;
  void* handle_ = nullptr;
  CK_FUNCTION_LIST* functions_ = nullptr;
  P11haTestMemberCountFn count_ = nullptr;
  P11haTestMemberResetCountsFn reset_counts_ = nullptr;
  P11haTestMemberSetFaultFn set_fault_ = nullptr;
  P11haTestMemberDumpCountsFn dump_counts_ = nullptr;
};

struct KeyPair {
  CK_OBJECT_HANDLE public_key = CK_INVALID_HANDLE;
  CK_OBJECT_HANDLE private_key = CK_INVALID_HANDLE;
};
// EC P-256; token objects when `on_token`, labelled `label`.
KeyPair GenerateEcKey(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE s, bool on_token,
                      const std::string& label);
// RSA-1024 session key pair for signing and encryption.
KeyPair GenerateRsaKey(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE s);
// A 32-byte session key from CKM_AES_KEY_GEN or CKM_GENERIC_SECRET_KEY_GEN.
CK_OBJECT_HANDLE GenerateSecretKey(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE s,
                                   CK_MECHANISM_TYPE generator);
void SignInit(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key);  // CKM_ECDSA
// C_SignInit(CKM_ECDSA) + C_Sign over 32 bytes; returns the C_Sign result.
CK_RV SignOnce(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key);
std::vector<CK_OBJECT_HANDLE> FindByLabel(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE s,
                                          const std::string& label);

// Waits until `member` has counted `calls` calls of `function`, i.e. a caller is inside it.
void WaitForCount(const LoadedMember& member, const char* function, int calls);

// One staged member, initialised, with a user session on its token m1 and a session EC key.
struct OneMember {
  OneMember();

  TempDir dir;
  std::unique_ptr<LoadedMember> member;
  CK_FUNCTION_LIST* f = nullptr;
  CK_SESSION_HANDLE session = CK_INVALID_HANDLE;
  KeyPair key;
};

// Process CPU time (user + system) in milliseconds.
double CpuMilliseconds();

}  // namespace p11ha::test_member::testing
