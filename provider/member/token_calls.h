// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <p11-kit/pkcs11.h>

#include <iterator>

#include "provider/member/member.h"
#include "replication/token_session.h"

namespace p11ha {

// A member function called straight, from inside one member call (Member::CallWithState).
template <typename Fn, typename... Args>
CK_RV CallStraight(const CK_FUNCTION_LIST& functions, Fn CK_FUNCTION_LIST::*field, Args... args) {
  Fn fn = functions.*field;
  return fn == nullptr ? CKR_FUNCTION_NOT_SUPPORTED : fn(args...);
}

// replication::TokenSession written once over `Session::Call(name, kind, field, args...)` and
// `Session::session()`: MemberTokenSession sends each call through Member::Call, and
// InCallTokenSession calls the member's functions straight, from inside one member call.
template <typename Session>
class TokenCalls : public replication::TokenSession {
 public:
  CK_RV Login(CK_USER_TYPE user, const SecureBytes& pin) override {
    return self().Call("C_Login", CallKind::kStore, &CK_FUNCTION_LIST::C_Login, self().session(), user,
                       const_cast<CK_UTF8CHAR_PTR>(pin.data()), CK_ULONG{pin.size()});
  }

  CK_RV Logout() override {
    return self().Call("C_Logout", CallKind::kStore, &CK_FUNCTION_LIST::C_Logout, self().session());
  }

  CK_RV CreateObject(std::span<CK_ATTRIBUTE> attributes, CK_OBJECT_HANDLE& object) override {
    return self().Call("C_CreateObject", CallKind::kStore, &CK_FUNCTION_LIST::C_CreateObject, self().session(),
                       attributes.data(), CK_ULONG{attributes.size()}, &object);
  }

  CK_RV CopyObject(CK_OBJECT_HANDLE source, std::span<CK_ATTRIBUTE> attributes, CK_OBJECT_HANDLE& copy) override {
    return self().Call("C_CopyObject", CallKind::kStore, &CK_FUNCTION_LIST::C_CopyObject, self().session(), source,
                       attributes.data(), CK_ULONG{attributes.size()}, &copy);
  }

  CK_RV DestroyObject(CK_OBJECT_HANDLE object) override {
    return self().Call("C_DestroyObject", CallKind::kStore, &CK_FUNCTION_LIST::C_DestroyObject, self().session(),
                       object);
  }

  CK_RV FindObjects(std::span<CK_ATTRIBUTE> match, std::vector<CK_OBJECT_HANDLE>& found) override {
    found.clear();
    CK_RV rv = self().Call("C_FindObjectsInit", CallKind::kStore, &CK_FUNCTION_LIST::C_FindObjectsInit,
                           self().session(), match.data(), CK_ULONG{match.size()});
    if (rv != CKR_OK) return rv;
    CK_OBJECT_HANDLE batch[64];
    for (;;) {
      CK_ULONG n = 0;
      rv = self().Call("C_FindObjects", CallKind::kStore, &CK_FUNCTION_LIST::C_FindObjects, self().session(), batch,
                       CK_ULONG{std::size(batch)}, &n);
      if (rv != CKR_OK || n == 0) break;
      found.insert(found.end(), batch, batch + n);
    }
    const CK_RV final_rv =
        self().Call("C_FindObjectsFinal", CallKind::kStore, &CK_FUNCTION_LIST::C_FindObjectsFinal, self().session());
    return rv != CKR_OK ? rv : final_rv;
  }

  CK_RV GetAttributeValue(CK_OBJECT_HANDLE object, std::span<CK_ATTRIBUTE> attributes) override {
    return self().Call("C_GetAttributeValue", CallKind::kParallel, &CK_FUNCTION_LIST::C_GetAttributeValue,
                       self().session(), object, attributes.data(), CK_ULONG{attributes.size()});
  }

  CK_RV SetAttributeValue(CK_OBJECT_HANDLE object, std::span<CK_ATTRIBUTE> attributes) override {
    return self().Call("C_SetAttributeValue", CallKind::kStore, &CK_FUNCTION_LIST::C_SetAttributeValue,
                       self().session(), object, attributes.data(), CK_ULONG{attributes.size()});
  }

  CK_RV UnwrapKey(CK_MECHANISM_TYPE mechanism, CK_OBJECT_HANDLE unwrapping_key, std::span<const CK_BYTE> wrapped,
                  std::span<CK_ATTRIBUTE> attributes, CK_OBJECT_HANDLE& key) override {
    CK_MECHANISM m{mechanism, nullptr, 0};
    return self().Call("C_UnwrapKey", CallKind::kStore, &CK_FUNCTION_LIST::C_UnwrapKey, self().session(), &m,
                       unwrapping_key, const_cast<CK_BYTE_PTR>(wrapped.data()), CK_ULONG{wrapped.size()},
                       attributes.data(), CK_ULONG{attributes.size()}, &key);
  }

  CK_RV WrapKey(CK_MECHANISM_TYPE mechanism, CK_OBJECT_HANDLE wrapping_key, CK_OBJECT_HANDLE key,
                std::vector<CK_BYTE>& wrapped) override {
    CK_MECHANISM m{mechanism, nullptr, 0};
    auto wrap = [&](CK_BYTE_PTR into, CK_ULONG* size) {
      return self().Call("C_WrapKey", CallKind::kParallel, &CK_FUNCTION_LIST::C_WrapKey, self().session(), &m,
                         wrapping_key, key, into, size);
    };
    // Room for any key this side of RSA-8192 in PKCS#8: the blob comes back from one call, with
    // no size query first. Each member call is a hand-off to a worker, and a scan wraps every key.
    constexpr CK_ULONG kRoom = 8192;
    wrapped.resize(kRoom);
    CK_ULONG size = kRoom;
    CK_RV rv = wrap(wrapped.data(), &size);
    if (rv == CKR_BUFFER_TOO_SMALL) {
      size = 0;
      if ((rv = wrap(nullptr, &size)) != CKR_OK) return rv;
      wrapped.resize(size);
      rv = wrap(wrapped.data(), &size);
    }
    wrapped.resize(rv == CKR_OK ? size : 0);
    return rv;
  }

 private:
  Session& self() { return static_cast<Session&>(*this); }
};

// A TokenSession for the body of one member call (Member::CallWithState), on the worker
// thread that runs it: its calls go to the member's functions straight, and the whole body
// counts as one call (its kind, its timeout). It never opens or closes the session it is given.
class InCallTokenSession final : public TokenCalls<InCallTokenSession> {
 public:
  InCallTokenSession(const CK_FUNCTION_LIST& functions, CK_SESSION_HANDLE session, const std::string& name)
      : functions_(functions), session_(session), name_(name) {}

  const std::string& name() const override { return name_; }
  CK_SESSION_HANDLE session() const { return session_; }

  template <typename Fn, typename... Args>
  CK_RV Call(const char*, CallKind, Fn CK_FUNCTION_LIST::*field, Args... args) {
    return CallStraight(functions_, field, args...);
  }

 private:
  const CK_FUNCTION_LIST& functions_;
  const CK_SESSION_HANDLE session_;
  const std::string& name_;  // the job's state holds it
};

}  // namespace p11ha
