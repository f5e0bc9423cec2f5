// SPDX-License-Identifier: Apache-2.0
#include "raw_token_session.h"

#include <stdexcept>

namespace p11ha::bench {

CK_OBJECT_HANDLE FindDomainKey(Module& module, CK_SESSION_HANDLE session) {
  CK_OBJECT_CLASS secret = CKO_SECRET_KEY;
  const std::string label = "p11ha-domain";  // the config default, which the bench keeps
  auto found = FindAll(module, session, {{CKA_CLASS, &secret, sizeof secret}, LabelAttribute(label)});
  if (found.size() != 1) throw std::runtime_error("expected one domain key, found " + std::to_string(found.size()));
  return found.front();
}

CK_RV RawTokenSession::Login(CK_USER_TYPE user, const SecureBytes& pin) {
  return module_->C_Login(session_, user, const_cast<CK_UTF8CHAR_PTR>(pin.data()), pin.size());
}

CK_RV RawTokenSession::Logout() { return module_->C_Logout(session_); }

CK_RV RawTokenSession::CreateObject(std::span<CK_ATTRIBUTE> attributes, CK_OBJECT_HANDLE& object) {
  return module_->C_CreateObject(session_, attributes.data(), attributes.size(), &object);
}

CK_RV RawTokenSession::CopyObject(CK_OBJECT_HANDLE source, std::span<CK_ATTRIBUTE> attributes,
                                  CK_OBJECT_HANDLE& copy) {
  return module_->C_CopyObject(session_, source, attributes.data(), attributes.size(), &copy);
}

CK_RV RawTokenSession::DestroyObject(CK_OBJECT_HANDLE object) { return module_->C_DestroyObject(session_, object); }

CK_RV RawTokenSession::FindObjects(std::span<CK_ATTRIBUTE> match, std::vector<CK_OBJECT_HANDLE>& found) {
  found = FindAll(module_, session_, std::vector<CK_ATTRIBUTE>(match.begin(), match.end()));
  return CKR_OK;
}

CK_RV RawTokenSession::GetAttributeValue(CK_OBJECT_HANDLE object, std::span<CK_ATTRIBUTE> attributes) {
  return module_->C_GetAttributeValue(session_, object, attributes.data(), attributes.size());
}

CK_RV RawTokenSession::SetAttributeValue(CK_OBJECT_HANDLE object, std::span<CK_ATTRIBUTE> attributes) {
  return module_->C_SetAttributeValue(session_, object, attributes.data(), attributes.size());
}

CK_RV RawTokenSession::WrapKey(CK_MECHANISM_TYPE type, CK_OBJECT_HANDLE wrapping_key, CK_OBJECT_HANDLE key,
                               std::vector<CK_BYTE>& wrapped) {
  CK_MECHANISM mechanism{type, nullptr, 0};
  // One call into room enough, as MemberTokenSession does.
  wrapped.resize(8192);
  CK_ULONG length = wrapped.size();
  const CK_RV rv = module_->C_WrapKey(session_, &mechanism, wrapping_key, key, wrapped.data(), &length);
  wrapped.resize(rv == CKR_OK ? length : 0);
  return rv;
}

CK_RV RawTokenSession::UnwrapKey(CK_MECHANISM_TYPE type, CK_OBJECT_HANDLE unwrapping_key,
                                 std::span<const CK_BYTE> wrapped, std::span<CK_ATTRIBUTE> attributes,
                                 CK_OBJECT_HANDLE& key) {
  CK_MECHANISM mechanism{type, nullptr, 0};
  return module_->C_UnwrapKey(session_, &mechanism, unwrapping_key, const_cast<CK_BYTE_PTR>(wrapped.data()),
                              wrapped.size(), attributes.data(), attributes.size(), &key);
}

}  // namespace p11ha::bench
