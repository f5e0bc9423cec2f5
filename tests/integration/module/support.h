// SPDX-License-Identifier: Apache-2.0
// Helpers for loading libp11ha.so the way an application does, over SoftHSM farms or staged
// test members (tests/fakes/test_member.h). Every ctest test is its own process, so p11ha is
// loaded (and configured through P11HA_CONFIG) once per case.
#pragma once

#include <p11-kit/pkcs11.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace p11ha::module_test {

using Bytes = std::vector<unsigned char>;
using Digest = std::array<unsigned char, 32>;

constexpr const char* kUserPin = "1234";  // make-farm.sh and stage-test-members.sh

// A directory under $TMPDIR, removed with everything in it unless P11HA_KEEP_TEST_DIRS is set.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};

// Runs a program without a shell, in a separate process. `env` entries ("NAME=value") are
// added to (or replace) this process's environment for the child only.
CommandResult Run(const std::vector<std::string>& argv, const std::vector<std::string>& env = {});

std::string ReadFile(const std::string& path);
void WriteFile(const std::string& path, const std::string& text);
// Test members poll their control file by stat(): a rename makes the change one atomic event.
void WriteFileAtomically(const std::string& path, const std::string& text);
bool Contains(const std::string& text, const std::string& needle);
// The first line of `text` that contains every needle, or "" when none does.
std::string LineWithAll(const std::string& text, const std::vector<std::string>& needles);

// These three also install a replication domain key on 2+ members when P11HA_CLI names the
// CLI (set by CMake), since such a cluster refuses to create keys without one.
// make-farm.sh DIR N: SoftHSM tokens m1..mN (user PIN 1234) and SOFTHSM2_CONF set for them.
void MakeFarm(const std::string& dir, int members);
// The same with a user PIN of our choosing (make-farm.sh hardcodes 1234).
void MakeTokens(const std::string& dir, int members, const std::string& user_pin);
// stage-test-members.sh DIR N: DIR/member-i.so over DIR/softhsm2-i.conf, token m<i>.
void StageMembers(const std::string& dir, int members);
std::string MemberSo(const std::string& dir, int i);      // DIR/member-i.so
std::string MemberConf(const std::string& dir, int i);    // DIR/softhsm2-i.conf

struct MemberSpec {
  std::string name;
  std::string module;
  std::string token;  // RFC 7512 URI
};

struct ConfigSpec {
  std::string label = "ha-test";
  std::uint64_t slot_id = 0;
  std::vector<MemberSpec> members;
  std::string policy = "least-busy";
  std::string log_level = "info";
  std::string log_file;
  unsigned probe_interval_ms = 0;  // 0: leave p11ha's default
  unsigned call_timeout_ms = 0;    // 0: leave p11ha's default
  std::optional<std::uint64_t> replay_limit_bytes;
  std::string quorum;              // TOML value of replication.quorum; empty: p11ha's default
  std::optional<unsigned> catalog_max_age_ms;
};

std::string RenderConfig(const ConfigSpec& spec);
// Writes the config and points P11HA_CONFIG at it (read at every C_Initialize).
void UseConfig(const std::string& path, const ConfigSpec& spec);
// Members hsm-1..hsm-N over make-farm.sh tokens m1..mN in plain SoftHSM.
std::vector<MemberSpec> FarmMembers(int members);
// Members hsm-1..hsm-N over staged test members.
std::vector<MemberSpec> TestMembers(const std::string& dir, int members);

// libp11ha.so's function list; the library is loaded on first use and never unloaded.
CK_FUNCTION_LIST* P11ha();
CK_RV Initialize(CK_FLAGS flags = CKF_OS_LOCKING_OK);
std::string RvText(CK_RV rv);

// C_Initialize on construction (REQUIREd), C_Finalize on destruction unless Finalize() ran.
class Initialized {
 public:
  explicit Initialized(CK_FLAGS flags = CKF_OS_LOCKING_OK);
  ~Initialized();
  Initialized(const Initialized&) = delete;
  Initialized& operator=(const Initialized&) = delete;
  CK_RV Finalize();

 private:
  bool active_ = false;
};

// Hooks of a staged test member already loaded into this process by p11ha.
int MemberCount(const std::string& so_path, const char* function);
// Writes the member's control file (applied by the member at its next call).
void SetMemberFault(const std::string& so_path, const std::string& spec);

int ThreadCount();  // entries of /proc/self/task
// True once ThreadCount() is `expected`, waiting up to 500 ms: a joined thread can still be
// listed in /proc/self/task for a moment (the kernel wakes the joiner before it unlists the
// thread). A thread left running is still listed after the wait.
bool ThreadCountSettlesTo(int expected);
bool WaitFor(const std::function<bool()>& condition, std::chrono::milliseconds timeout);

// Redirects fd 2 into a file until Stop(), so messages written before p11ha's logger is
// configured can be read back.
class StderrCapture {
 public:
  explicit StderrCapture(std::string path);
  ~StderrCapture();
  StderrCapture(const StderrCapture&) = delete;
  StderrCapture& operator=(const StderrCapture&) = delete;
  std::string Stop();

 private:
  std::string path_;
  int saved_ = -1;
};

// PKCS#11 through p11ha (or any function list).
CK_SESSION_HANDLE OpenSession(CK_FUNCTION_LIST* f, CK_SLOT_ID slot = 0);
CK_RV Login(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE session, const std::string& pin);
CK_RV SetPin(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE session, const std::string& old_pin,
             const std::string& new_pin);

struct KeyPair {
  CK_OBJECT_HANDLE public_key = CK_INVALID_HANDLE;
  CK_OBJECT_HANDLE private_key = CK_INVALID_HANDLE;
};
KeyPair GenerateP256(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE session, bool on_token,
                     const std::string& label);
// The same without a REQUIRE: the answer, for a test that expects a refusal.
CK_RV TryGenerateP256(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE session, bool on_token, const std::string& label,
                      KeyPair* pair);
// CKM_ECDSA over a SHA-256 digest; the raw r||s signature, empty when a call failed (`rv`).
Bytes SignDigest(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE key,
                 const Digest& digest, CK_RV* rv);
// The uncompressed point (04||X||Y) from CKA_EC_POINT.
Bytes EcPoint(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE public_key);
std::vector<CK_OBJECT_HANDLE> Find(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE session,
                                   std::vector<CK_ATTRIBUTE> query);
CK_OBJECT_HANDLE CreateData(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE session, bool on_token,
                            bool is_private, const std::string& label);
CK_RV ReadLabel(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object,
                std::string* label);

// OpenSSL side.
Digest Sha256(const std::string& text);
bool VerifyP256(const Bytes& point, const Digest& digest, const Bytes& signature);
struct P256Secret {
  Bytes scalar;  // 32 bytes
  Bytes point;   // 04||X||Y
};
P256Secret NewP256Secret();
// Imports the pair into the token labelled `token` of the SoftHSM store named by
// `softhsm_conf`, in a child process so this one never loads that store itself.
void SeedP256(const std::string& softhsm_conf, const std::string& token, const P256Secret& key,
              const Bytes& id, const std::string& label);

}  // namespace p11ha::module_test
