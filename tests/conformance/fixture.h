// SPDX-License-Identifier: Apache-2.0
// What every conformance case uses: readable CK_RV assertions, attribute templates, an RAII
// session, and a fixture that hands out the module, the slot, and object helpers.
#pragma once

#include <p11-kit/pkcs11.h>

#include <string>
#include <string_view>
#include <vector>

#include "target.h"

// Compares CK_RV by name so a failure reads "CKR_PIN_INCORRECT" == "CKR_OK", not 160 == 0.
#define REQUIRE_RV(call, expected) \
  REQUIRE(::p11ha::conformance::RvName(call) == ::p11ha::conformance::RvName(expected))
#define CHECK_RV(call, expected) \
  CHECK(::p11ha::conformance::RvName(call) == ::p11ha::conformance::RvName(expected))

namespace p11ha::conformance {

using Bytes = std::vector<CK_BYTE>;

inline constexpr std::string_view kUserPin = "1234";
inline constexpr std::string_view kSoPin = "12345678";
inline constexpr CK_FLAGS kRwFlags = CKF_SERIAL_SESSION | CKF_RW_SESSION;
inline constexpr CK_FLAGS kRoFlags = CKF_SERIAL_SESSION;
// Never issued by either target in a run this short, so it is an invalid handle everywhere.
inline constexpr CK_ULONG kBogusHandle = 0x7fff0123;

std::string RvName(CK_RV rv);
Bytes ToBytes(std::string_view text);
std::string ToString(const Bytes& bytes);
// A label no earlier case or section has used in this run (token objects outlive cases).
std::string UniqueLabel(std::string_view stem);

// DER-encoded CKA_EC_PARAMS (named-curve OIDs).
extern const Bytes kP256Params;
extern const Bytes kP384Params;

// A template builder. Setting a type twice replaces the first value, so helpers can take
// defaults and let a case override them with Merge.
class Attributes {
 public:
  Attributes& Bool(CK_ATTRIBUTE_TYPE type, bool flag);
  Attributes& Ulong(CK_ATTRIBUTE_TYPE type, CK_ULONG number);
  Attributes& Data(CK_ATTRIBUTE_TYPE type, const Bytes& bytes);
  Attributes& Text(CK_ATTRIBUTE_TYPE type, std::string_view text);
  Attributes& Merge(const Attributes& other);
  // Pointers into this object; valid until it is changed or destroyed.
  CK_ATTRIBUTE_PTR get();
  CK_ULONG size() const { return static_cast<CK_ULONG>(types_.size()); }

 private:
  std::vector<CK_ATTRIBUTE_TYPE> types_;
  std::vector<Bytes> values_;
  std::vector<CK_ATTRIBUTE> attributes_;
};

class Session {
 public:
  Session(CK_FUNCTION_LIST_PTR p11, CK_SLOT_ID slot, CK_FLAGS flags);
  Session(Session&& other) noexcept;
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  Session& operator=(Session&&) = delete;
  // Closes the session if the case did not; the rv is ignored because a case may already
  // have invalidated it (C_CloseAllSessions, C_Finalize).
  ~Session();

  CK_SESSION_HANDLE get() const { return handle_; }
  // Implicit so that calls read like PKCS#11: p11->C_Login(session, ...).
  operator CK_SESSION_HANDLE() const { return handle_; }  // NOLINT(google-explicit-constructor)
  CK_STATE State() const;
  void Login(CK_USER_TYPE user = CKU_USER, std::string_view pin = kUserPin) const;
  CK_RV Close();

 private:
  CK_FUNCTION_LIST_PTR p11_;
  CK_SESSION_HANDLE handle_ = CK_INVALID_HANDLE;
  bool open_ = false;
};

struct KeyPair {
  CK_OBJECT_HANDLE public_key = CK_INVALID_HANDLE;
  CK_OBJECT_HANDLE private_key = CK_INVALID_HANDLE;
};

CK_SLOT_ID FindSlot(CK_FUNCTION_LIST_PTR p11, std::string_view token_label);

struct Fixture {
  Fixture();
  // Every case starts with no sessions and nobody logged in, whatever the previous one did.
  ~Fixture();

  bool HasMechanism(CK_MECHANISM_TYPE mechanism) const;
  Session Open(CK_FLAGS flags = kRwFlags) const;
  Session OpenLoggedIn(CK_FLAGS flags = kRwFlags) const;

  CK_OBJECT_HANDLE Create(CK_SESSION_HANDLE session, Attributes& attributes) const;
  // CKO_DATA with a label and value; a session object unless `token`.
  CK_OBJECT_HANDLE CreateData(CK_SESSION_HANDLE session, std::string_view label, bool token,
                              bool is_private = false) const;
  Bytes Attribute(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object,
                  CK_ATTRIBUTE_TYPE type) const;
  CK_ULONG UlongAttribute(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object,
                          CK_ATTRIBUTE_TYPE type) const;
  bool BoolAttribute(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object,
                     CK_ATTRIBUTE_TYPE type) const;
  // C_FindObjects in batches of `batch` until it returns fewer than asked.
  std::vector<CK_OBJECT_HANDLE> Find(CK_SESSION_HANDLE session, Attributes& attributes,
                                     CK_ULONG batch = 16) const;
  std::vector<CK_OBJECT_HANDLE> FindByLabel(CK_SESSION_HANDLE session,
                                            std::string_view label) const;

  // An AES-256 key made by C_GenerateKey (session object); `extra` adds or overrides.
  CK_OBJECT_HANDLE GenerateAes(CK_SESSION_HANDLE session, const Attributes& extra = {}) const;
  // An AES key with a known value (C_CreateObject, session object), to compare with OpenSSL.
  CK_OBJECT_HANDLE ImportAes(CK_SESSION_HANDLE session, const Bytes& value,
                             const Attributes& extra = {}) const;
  KeyPair GenerateRsa(CK_SESSION_HANDLE session, bool token, std::string_view id) const;
  KeyPair GenerateEc(CK_SESSION_HANDLE session, const Bytes& ec_params) const;
  // The run's RSA-2048 token key pair: generated on first use (it is slow on SoftHSM), then
  // found again by CKA_ID because handles do not survive logout or C_CloseAllSessions.
  KeyPair SharedRsa(CK_SESSION_HANDLE logged_in_session) const;

  CK_FUNCTION_LIST_PTR p11;
  CK_SLOT_ID slot;
};

}  // namespace p11ha::conformance
