// SPDX-License-Identifier: Apache-2.0
// The one place where C++ meets the C ABI: exceptions become CK_RV here and nowhere else.
#pragma once

#include <p11-kit/pkcs11.h>

#include <exception>
#include <new>
#include <string>
#include <type_traits>

#include "provider/core/error.h"
#include "provider/core/log.h"
#include "provider/core/module.h"
#include "provider/member/application_call.h"

namespace p11ha::abi {

// Routine answers that applications provoke on purpose; logged at debug, not info.
inline bool RoutineRv(CK_RV rv) {
  return rv == CKR_BUFFER_TOO_SMALL || rv == CKR_ATTRIBUTE_TYPE_INVALID || rv == CKR_ATTRIBUTE_SENSITIVE ||
         rv == CKR_USER_ALREADY_LOGGED_IN || rv == CKR_SIGNATURE_INVALID || rv == CKR_MECHANISM_INVALID;
}

template <typename Body>
CK_RV Guard(const char* function, Body&& body) noexcept {
  CK_RV rv = CKR_GENERAL_ERROR;
  std::string detail;  // a copy: the exception is gone once its handler ends
  try {
    rv = body();
  } catch (const CkError& e) {
    rv = e.rv();
    detail = e.what();
  } catch (const std::bad_alloc&) {
    rv = CKR_HOST_MEMORY;
  } catch (const std::exception& e) {
    rv = CKR_GENERAL_ERROR;
    try {
      log::Get()->error("{}: internal error: {}", function, e.what());
    } catch (...) {
    }
  } catch (...) {
    rv = CKR_GENERAL_ERROR;
  }
  if (Module::InternalAnswer(rv)) rv = CKR_DEVICE_ERROR;
  if (rv != CKR_OK) {
    try {
      auto logger = log::Get();
      auto level = RoutineRv(rv) ? spdlog::level::debug : spdlog::level::info;
      if (rv == CKR_GENERAL_ERROR || rv == CKR_DEVICE_ERROR) level = spdlog::level::warn;
      logger->log(level, "{} -> {}{}{}", function, RvName(rv), detail.empty() ? "" : ": ", detail);
    } catch (...) {
    }
  }
  return rv;
}

// Runs `body(Module&)` for an initialised module; a body returning void means CKR_OK.
template <typename Body>
CK_RV WithModule(const char* function, Body&& body) noexcept {
  return Guard(function, [&]() -> CK_RV {
    ApplicationCall call;
    auto module = Module::Current();
    if (!module) return CKR_CRYPTOKI_NOT_INITIALIZED;
    if constexpr (std::is_void_v<decltype(body(*module))>) {
      body(*module);
      return CKR_OK;
    } else {
      return body(*module);
    }
  });
}

}  // namespace p11ha::abi
