// SPDX-License-Identifier: Apache-2.0
#include "test_member_harness.h"

#include <dlfcn.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include <array>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

namespace p11ha::test_member::testing {
namespace {

std::string Trimmed(const CK_UTF8CHAR* text, std::size_t size) {
  std::string value(reinterpret_cast<const char*>(text), size);
  value.erase(value.find_last_not_of(' ') + 1);
  return value;
}

}  // namespace

TempDir::TempDir() {
  std::string pattern = (std::filesystem::temp_directory_path() / "p11ha-tm-XXXXXX").string();
  REQUIRE(mkdtemp(pattern.data()) != nullptr);
  path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

std::string Quote(const std::string& text) {
  std::string quoted = "'";
  for (char c : text) {
    if (c == '\'') {
      quoted += "'\\''";
    } else {
      quoted += c;
    }
  }
  return quoted + "'";
}

CommandResult RunCommand(const std::string& command) {
  CommandResult result;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  REQUIRE(pipe != nullptr);
  std::array<char, 4096> buffer{};
  std::size_t n = 0;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0) {
    result.output.append(buffer.data(), n);
  }
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

void StageMembers(const std::string& dir, int count) {
  const auto result = RunCommand(Quote(P11HA_STAGE_SCRIPT) + " " + Quote(dir) + " " +
                                 std::to_string(count) + " " + Quote(P11HA_TEST_MEMBER_SO));
  INFO(result.output);
  REQUIRE(result.exit_code == 0);
  REQUIRE(result.output.empty());
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  REQUIRE(out.good());
}

void WriteFileAtomically(const std::string& path, const std::string& text) {
  WriteFile(path + ".tmp", text);
  REQUIRE(std::rename((path + ".tmp").c_str(), path.c_str()) == 0);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

LoadedMember::LoadedMember(const std::string& so_path) : path_(so_path) {
  handle_ = dlopen(so_path.c_str(), RTLD_NOW | RTLD_LOCAL);
  INFO((handle_ == nullptr ? dlerror() : ""));
  REQUIRE(handle_ != nullptr);
  auto get_function_list =
      reinterpret_cast<CK_C_GetFunctionList>(dlsym(handle_, "C_GetFunctionList"));
  count_ = reinterpret_cast<P11haTestMemberCountFn>(dlsym(handle_, "p11ha_test_member_count"));
  reset_counts_ = reinterpret_cast<P11haTestMemberResetCountsFn>(
      dlsym(handle_, "p11ha_test_member_reset_counts"));
  set_fault_ =
      reinterpret_cast<P11haTestMemberSetFaultFn>(dlsym(handle_, "p11ha_test_member_set_fault"));
  dump_counts_ = reinterpret_cast<P11haTestMemberDumpCountsFn>(
      dlsym(handle_, "p11ha_test_member_dump_counts"));
  REQUIRE(get_function_list != nullptr);
  REQUIRE(count_ != nullptr);
  REQUIRE(reset_counts_ != nullptr);
  REQUIRE(set_fault_ != nullptr);
  REQUIRE(dump_counts_ != nullptr);
  REQUIRE(get_function_list(&functions_) == CKR_OK);
  REQUIRE(functions_ != nullptr);
}

LoadedMember::~LoadedMember() {
  // Leaves SoftHSM finalised even when a test failed half-way.
  if (functions_ != nullptr) {
    set_fault_("clear");
    functions_->C_Finalize(nullptr);
  }
  if (handle_ != nullptr) dlclose(handle_);
}

CK_RV LoadedMember::Initialize() const {
  CK_C_INITIALIZE_ARGS args{};
  args.flags = CKF_OS_LOCKING_OK;
  return functions_->C_Initialize(&args);
}

std::vector<CK_SLOT_ID> LoadedMember::Slots() const {
  CK_ULONG count = 0;
  REQUIRE(functions_->C_GetSlotList(CK_TRUE, nullptr, &count) == CKR_OK);
  std::vector<CK_SLOT_ID> slots(count);
  REQUIRE(functions_->C_GetSlotList(CK_TRUE, slots.data(), &count) == CKR_OK);
  slots.resize(count);
  return slots;
}

std::vector<std::string> LoadedMember::TokenLabels() const {
  std::vector<std::string> labels;
  for (const CK_SLOT_ID slot : Slots()) {
    CK_TOKEN_INFO info{};
    REQUIRE(functions_->C_GetTokenInfo(slot, &info) == CKR_OK);
    if ((info.flags & CKF_TOKEN_INITIALIZED) != 0) {
      labels.push_back(Trimmed(info.label, sizeof(info.label)));
    }
  }
  return labels;
}

CK_SLOT_ID LoadedMember::SlotOf(const std::string& label) const {
  for (const CK_SLOT_ID slot : Slots()) {
    CK_TOKEN_INFO info{};
    REQUIRE(functions_->C_GetTokenInfo(slot, &info) == CKR_OK);
    if (Trimmed(info.label, sizeof(info.label)) == label) return slot;
  }
  FAIL("no token labelled " << label << " in " << path_);
  return 0;
}

CK_SESSION_HANDLE LoadedMember::OpenUserSession(const std::string& label) const {
  CK_SESSION_HANDLE session = CK_INVALID_HANDLE;
  REQUIRE(functions_->C_OpenSession(SlotOf(label), CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr,
                                    nullptr, &session) == CKR_OK);
  std::string pin = "1234";
  const CK_RV rv = functions_->C_Login(session, CKU_USER,
                                       reinterpret_cast<CK_UTF8CHAR_PTR>(pin.data()), pin.size());
  REQUIRE((rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN));
  return session;
}

KeyPair GenerateEcKey(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE s, bool on_token,
                      const std::string& label) {
  // DER of OID 1.2.840.10045.3.1.7 (P-256).
  CK_BYTE params[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
  CK_BBOOL token = on_token ? CK_TRUE : CK_FALSE;
  CK_BBOOL yes = CK_TRUE;
  std::string label_copy = label;
  CK_ATTRIBUTE public_template[] = {
      {CKA_EC_PARAMS, params, sizeof(params)},
      {CKA_TOKEN, &token, sizeof(token)},
      {CKA_VERIFY, &yes, sizeof(yes)},
      {CKA_LABEL, label_copy.data(), label_copy.size()},
  };
  CK_ATTRIBUTE private_template[] = {
      {CKA_TOKEN, &token, sizeof(token)},
      {CKA_PRIVATE, &yes, sizeof(yes)},
      {CKA_SIGN, &yes, sizeof(yes)},
      {CKA_LABEL, label_copy.data(), label_copy.size()},
  };
  CK_MECHANISM mechanism{CKM_EC_KEY_PAIR_GEN, nullptr, 0};
  KeyPair pair;
  REQUIRE(f->C_GenerateKeyPair(s, &mechanism, public_template, std::size(public_template),
                               private_template, std::size(private_template), &pair.public_key,
                               &pair.private_key) == CKR_OK);
  return pair;
}

CK_RV SignOnce(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key) {
  SignInit(f, s, key);
  std::array<CK_BYTE, 32> digest{};
  std::array<CK_BYTE, 128> signature{};
  CK_ULONG length = signature.size();
  return f->C_Sign(s, digest.data(), digest.size(), signature.data(), &length);
}

std::vector<CK_OBJECT_HANDLE> FindByLabel(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE s,
                                          const std::string& label) {
  std::string label_copy = label;
  CK_ATTRIBUTE query[] = {{CKA_LABEL, label_copy.data(), label_copy.size()}};
  REQUIRE(f->C_FindObjectsInit(s, query, 1) == CKR_OK);
  std::vector<CK_OBJECT_HANDLE> found(64);
  CK_ULONG count = 0;
  REQUIRE(f->C_FindObjects(s, found.data(), found.size(), &count) == CKR_OK);
  REQUIRE(f->C_FindObjectsFinal(s) == CKR_OK);
  found.resize(count);
  return found;
}

CK_OBJECT_HANDLE GenerateSecretKey(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE s,
                                   CK_MECHANISM_TYPE generator) {
  CK_ULONG length = 32;
  CK_BBOOL yes = CK_TRUE;
  CK_BBOOL no = CK_FALSE;
  CK_ATTRIBUTE key_template[] = {
      {CKA_VALUE_LEN, &length, sizeof(length)},
      {CKA_TOKEN, &no, sizeof(no)},
      {CKA_SIGN, &yes, sizeof(yes)},
      {CKA_VERIFY, &yes, sizeof(yes)},
      {CKA_ENCRYPT, &yes, sizeof(yes)},
      {CKA_DECRYPT, &yes, sizeof(yes)},
  };
  // Generic secrets take no encrypt/decrypt usage: pass only the first four then.
  const CK_ULONG count = generator == CKM_AES_KEY_GEN ? 6 : 4;
  CK_MECHANISM mechanism{generator, nullptr, 0};
  CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
  REQUIRE(f->C_GenerateKey(s, &mechanism, key_template, count, &key) == CKR_OK);
  return key;
}

KeyPair GenerateRsaKey(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE s) {
  CK_ULONG bits = 1024;
  CK_BYTE exponent[] = {1, 0, 1};
  CK_BBOOL yes = CK_TRUE;
  CK_BBOOL no = CK_FALSE;
  CK_ATTRIBUTE public_template[] = {
      {CKA_MODULUS_BITS, &bits, sizeof(bits)},
      {CKA_PUBLIC_EXPONENT, exponent, sizeof(exponent)},
      {CKA_TOKEN, &no, sizeof(no)},
      {CKA_VERIFY, &yes, sizeof(yes)},
      {CKA_ENCRYPT, &yes, sizeof(yes)},
  };
  CK_ATTRIBUTE private_template[] = {
      {CKA_TOKEN, &no, sizeof(no)},
      {CKA_SIGN, &yes, sizeof(yes)},
      {CKA_DECRYPT, &yes, sizeof(yes)},
  };
  CK_MECHANISM mechanism{CKM_RSA_PKCS_KEY_PAIR_GEN, nullptr, 0};
  KeyPair pair;
  REQUIRE(f->C_GenerateKeyPair(s, &mechanism, public_template, std::size(public_template),
                               private_template, std::size(private_template), &pair.public_key,
                               &pair.private_key) == CKR_OK);
  return pair;
}

void SignInit(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key) {
  CK_MECHANISM mechanism{CKM_ECDSA, nullptr, 0};
  REQUIRE(f->C_SignInit(s, &mechanism, key) == CKR_OK);
}

void WaitForCount(const LoadedMember& member, const char* function, int calls) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (member.Count(function) < calls && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  REQUIRE(member.Count(function) >= calls);
}

OneMember::OneMember() {
  StageMembers(dir.path(), 1);
  member = std::make_unique<LoadedMember>(dir.path() + "/member-1.so");
  f = member->f();
  REQUIRE(member->Initialize() == CKR_OK);
  session = member->OpenUserSession("m1");
  key = GenerateEcKey(f, session, false, "k");
}

double CpuMilliseconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  const auto ms = [](const timeval& t) { return t.tv_sec * 1000.0 + t.tv_usec / 1000.0; };
  return ms(usage.ru_utime) + ms(usage.ru_stime);
}

}  // namespace p11ha::test_member::testing
