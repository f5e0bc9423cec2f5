// SPDX-License-Identifier: Apache-2.0
#include "bench_module.h"

#include <dlfcn.h>

#include <cstdio>
#include <stdexcept>

namespace p11ha::bench {

Module::Module(const std::string& path, bool no_library_threads) {
  library_ = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (library_ == nullptr) throw std::runtime_error("cannot load " + path + ": " + dlerror());
  auto get = reinterpret_cast<CK_C_GetFunctionList>(dlsym(library_, "C_GetFunctionList"));
  if (get == nullptr || get(&f_) != CKR_OK) throw std::runtime_error(path + " has no C_GetFunctionList");
  CK_C_INITIALIZE_ARGS args{};
  args.flags = CKF_OS_LOCKING_OK | (no_library_threads ? CKF_LIBRARY_CANT_CREATE_OS_THREADS : 0);
  Check(f_->C_Initialize(&args), "C_Initialize");
}

Module::~Module() {
  f_->C_Finalize(nullptr);
  dlclose(library_);
}

CK_SLOT_ID Module::SlotOf(const std::string& label) {
  CK_ULONG count = 0;
  Check(f_->C_GetSlotList(CK_TRUE, nullptr, &count), "C_GetSlotList");
  std::vector<CK_SLOT_ID> slots(count);
  Check(f_->C_GetSlotList(CK_TRUE, slots.data(), &count), "C_GetSlotList");
  for (CK_ULONG i = 0; i < count; ++i) {
    CK_TOKEN_INFO info{};
    if (f_->C_GetTokenInfo(slots[i], &info) != CKR_OK) continue;
    std::string padded(reinterpret_cast<const char*>(info.label), sizeof info.label);
    if (padded.substr(0, padded.find_last_not_of(' ') + 1) == label) return slots[i];
  }
  throw std::runtime_error("no token labelled '" + label + "'");
}

void Module::Check(CK_RV rv, const char* what) {
  if (rv != CKR_OK) throw std::runtime_error(std::string(what) + " failed: 0x" + Hex(rv));
}

std::string Module::Hex(CK_RV rv) {
  char text[32];
  std::snprintf(text, sizeof text, "%08lx", static_cast<unsigned long>(rv));
  return text;
}

CK_SESSION_HANDLE OpenSession(Module& m, CK_SLOT_ID slot) {
  CK_SESSION_HANDLE session = CK_INVALID_HANDLE;
  Module::Check(m->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &session),
                "C_OpenSession");
  return session;
}

void Login(Module& m, CK_SESSION_HANDLE session, const std::string& pin) {
  CK_RV rv = m->C_Login(session, CKU_USER, reinterpret_cast<CK_UTF8CHAR*>(const_cast<char*>(pin.data())),
                        pin.size());
  if (rv != CKR_USER_ALREADY_LOGGED_IN) Module::Check(rv, "C_Login");
}

std::vector<CK_OBJECT_HANDLE> FindAll(Module& m, CK_SESSION_HANDLE session, std::vector<CK_ATTRIBUTE> match) {
  Module::Check(m->C_FindObjectsInit(session, match.data(), match.size()), "C_FindObjectsInit");
  std::vector<CK_OBJECT_HANDLE> found;
  CK_RV rv = CKR_OK;
  for (;;) {
    CK_OBJECT_HANDLE batch[256];
    CK_ULONG n = 0;
    rv = m->C_FindObjects(session, batch, 256, &n);
    if (rv != CKR_OK || n == 0) break;
    found.insert(found.end(), batch, batch + n);
  }
  m->C_FindObjectsFinal(session);
  Module::Check(rv, "C_FindObjects");
  return found;
}

}  // namespace p11ha::bench
