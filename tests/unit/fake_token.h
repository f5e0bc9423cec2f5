// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <p11-kit/pkcs11.h>

#include <cstddef>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "replication/token_session.h"

namespace p11ha::testing {

using Attributes = std::map<CK_ATTRIBUTE_TYPE, std::vector<CK_BYTE>>;

// An in-memory token for replication tests. Private and secret key values are sensitive, as on
// a real token; "wrapping" is a deterministic encoding of the key under the wrapping key's value,
// so two fakes with the same domain key give identical blobs, like AES key wrap does.
class FakeToken : public replication::TokenSession {
 public:
  explicit FakeToken(std::string name) : name_(std::move(name)) {}

  CK_OBJECT_HANDLE Put(Attributes attributes);
  // A second handle for an existing object, listed by every later find: the same object found
  // twice, as SoftHSM 2.6.1 does across processes (research §9). Destroying either removes both.
  CK_OBJECT_HANDLE ListTwice(CK_OBJECT_HANDLE handle);
  // Handles of objects matching every attribute of `match` (one per object, aliases left out).
  std::vector<CK_OBJECT_HANDLE> Objects(const Attributes& match = {}) const;
  std::vector<CK_BYTE> Value(CK_OBJECT_HANDLE handle, CK_ATTRIBUTE_TYPE type) const;

  // Calls that changed the token: create, copy, destroy, set, unwrap.
  std::size_t changes = 0;
  // Run after each FindObjects, and after each CreateObject or UnwrapKey: another process
  // acting between a find and what follows, or while a copy is being made.
  std::function<void()> after_find;
  std::function<void()> after_create;

  const std::string& name() const override { return name_; }
  CK_RV Login(CK_USER_TYPE, const SecureBytes&) override { return CKR_OK; }
  CK_RV Logout() override { return CKR_OK; }
  CK_RV CreateObject(std::span<CK_ATTRIBUTE> attributes, CK_OBJECT_HANDLE& object) override;
  CK_RV CopyObject(CK_OBJECT_HANDLE source, std::span<CK_ATTRIBUTE> attributes, CK_OBJECT_HANDLE& copy) override;
  CK_RV DestroyObject(CK_OBJECT_HANDLE object) override;
  CK_RV FindObjects(std::span<CK_ATTRIBUTE> match, std::vector<CK_OBJECT_HANDLE>& found) override;
  CK_RV GetAttributeValue(CK_OBJECT_HANDLE object, std::span<CK_ATTRIBUTE> attributes) override;
  CK_RV SetAttributeValue(CK_OBJECT_HANDLE object, std::span<CK_ATTRIBUTE> attributes) override;
  CK_RV WrapKey(CK_MECHANISM_TYPE mechanism, CK_OBJECT_HANDLE wrapping_key, CK_OBJECT_HANDLE key,
                std::vector<CK_BYTE>& wrapped) override;
  CK_RV UnwrapKey(CK_MECHANISM_TYPE mechanism, CK_OBJECT_HANDLE unwrapping_key, std::span<const CK_BYTE> wrapped,
                  std::span<CK_ATTRIBUTE> attributes, CK_OBJECT_HANDLE& key) override;

 private:
  const Attributes* Find(CK_OBJECT_HANDLE handle) const;
  Attributes* Find(CK_OBJECT_HANDLE handle);
  CK_OBJECT_HANDLE NewHandle(int object);

  std::string name_;
  std::map<int, Attributes> objects_;          // object number -> attributes
  std::map<CK_OBJECT_HANDLE, int> handles_;    // handle -> object number (aliases share one)
  int next_object_ = 1;
  CK_OBJECT_HANDLE next_handle_ = 1;
};

// Attribute sets for test objects (token objects, private unless said otherwise).
std::vector<CK_BYTE> Bytes(const std::string& text);
Attributes Certificate(const std::string& label, const std::string& id, const std::string& der);
Attributes DataObject(const std::string& label, const std::string& value);
Attributes SecretKey(const std::string& label, const std::string& id, const std::string& value,
                     bool extractable = true);
Attributes Ed25519Key(const std::string& label, const std::string& value);
Attributes DomainKey(const std::string& value, const std::string& label = "p11ha-domain");

}  // namespace p11ha::testing
