// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <p11-kit/pkcs11.h>

#include <span>
#include <string>
#include <vector>

#include "config/secure_bytes.h"

namespace p11ha::replication {

// The token operations replication needs on one token, over one read/write session of its
// own. replication/ declares it and provider/member/ implements it over a member, so this
// folder never sees a Member and can be driven by a fake token in tests. Every call returns
// the token's CK_RV unchanged; the caller decides what an answer means.
class TokenSession {
 public:
  virtual ~TokenSession() = default;

  // For messages: the member name, or the token URI of a token that is not a member.
  virtual const std::string& name() const = 0;

  // Login state is per token in PKCS#11, so these change it for every session of the token.
  virtual CK_RV Login(CK_USER_TYPE user, const SecureBytes& pin) = 0;
  virtual CK_RV Logout() = 0;

  virtual CK_RV CreateObject(std::span<CK_ATTRIBUTE> attributes, CK_OBJECT_HANDLE& object) = 0;
  virtual CK_RV CopyObject(CK_OBJECT_HANDLE source, std::span<CK_ATTRIBUTE> attributes,
                           CK_OBJECT_HANDLE& copy) = 0;
  virtual CK_RV DestroyObject(CK_OBJECT_HANDLE object) = 0;
  // Runs a whole C_FindObjectsInit/C_FindObjects/C_FindObjectsFinal.
  virtual CK_RV FindObjects(std::span<CK_ATTRIBUTE> match, std::vector<CK_OBJECT_HANDLE>& found) = 0;
  // C_GetAttributeValue with the usual size-query convention (pValue null fills ulValueLen).
  virtual CK_RV GetAttributeValue(CK_OBJECT_HANDLE object, std::span<CK_ATTRIBUTE> attributes) = 0;
  virtual CK_RV SetAttributeValue(CK_OBJECT_HANDLE object, std::span<CK_ATTRIBUTE> attributes) = 0;
  // C_WrapKey, with a size query first where the token needs one.
  virtual CK_RV WrapKey(CK_MECHANISM_TYPE mechanism, CK_OBJECT_HANDLE wrapping_key, CK_OBJECT_HANDLE key,
                        std::vector<CK_BYTE>& wrapped) = 0;
  virtual CK_RV UnwrapKey(CK_MECHANISM_TYPE mechanism, CK_OBJECT_HANDLE unwrapping_key, std::span<const CK_BYTE> wrapped,
                          std::span<CK_ATTRIBUTE> attributes, CK_OBJECT_HANDLE& key) = 0;
  // C_UnwrapKey, then C_WrapKey of the new key under the same key: key wrap is deterministic,
  // so equal blobs prove the copy. Returns the unwrap's answer; once that is CKR_OK,
  // `rewrap_rv` and `rewrapped` hold the wrap's. A member runs both as one member call.
  virtual CK_RV UnwrapAndRewrap(CK_MECHANISM_TYPE mechanism, CK_OBJECT_HANDLE unwrapping_key,
                                std::span<const CK_BYTE> wrapped, std::span<CK_ATTRIBUTE> attributes,
                                CK_OBJECT_HANDLE& key, CK_RV& rewrap_rv, std::vector<CK_BYTE>& rewrapped) {
    const CK_RV rv = UnwrapKey(mechanism, unwrapping_key, wrapped, attributes, key);
    if (rv == CKR_OK) rewrap_rv = WrapKey(mechanism, unwrapping_key, key, rewrapped);
    return rv;
  }
};

}  // namespace p11ha::replication
