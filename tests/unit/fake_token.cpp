// SPDX-License-Identifier: Apache-2.0
#include "tests/unit/fake_token.h"

#include <algorithm>
#include <cstring>

namespace p11ha::testing {
namespace {

template <typename T>
std::vector<CK_BYTE> Scalar(T value) {
  std::vector<CK_BYTE> bytes(sizeof value);
  std::memcpy(bytes.data(), &value, sizeof value);
  return bytes;
}

std::vector<CK_BYTE> Flag(bool value) { return {static_cast<CK_BYTE>(value ? CK_TRUE : CK_FALSE)}; }

template <typename T>
T ScalarOf(const Attributes& attributes, CK_ATTRIBUTE_TYPE type, T otherwise) {
  auto it = attributes.find(type);
  if (it == attributes.end() || it->second.size() != sizeof(T)) return otherwise;
  T value;
  std::memcpy(&value, it->second.data(), sizeof value);
  return value;
}

bool IsKey(const Attributes& attributes) {
  CK_OBJECT_CLASS object_class = ScalarOf<CK_OBJECT_CLASS>(attributes, CKA_CLASS, CKO_DATA);
  return object_class == CKO_PRIVATE_KEY || object_class == CKO_SECRET_KEY;
}

Attributes FromTemplate(std::span<const CK_ATTRIBUTE> attributes) {
  Attributes out;
  for (const CK_ATTRIBUTE& attribute : attributes) {
    const auto* bytes = static_cast<const CK_BYTE*>(attribute.pValue);
    out[attribute.type] = bytes ? std::vector<CK_BYTE>(bytes, bytes + attribute.ulValueLen) : std::vector<CK_BYTE>();
  }
  return out;
}

bool Matches(const Attributes& object, const Attributes& match) {
  return std::all_of(match.begin(), match.end(), [&object](const auto& wanted) {
    auto it = object.find(wanted.first);
    return it != object.end() && it->second == wanted.second;
  });
}

// "fake-wrap" | wrapping key value | class | key type | key value.
constexpr char kWrapMagic[] = "fake-wrap";

}  // namespace

const Attributes* FakeToken::Find(CK_OBJECT_HANDLE handle) const {
  auto it = handles_.find(handle);
  if (it == handles_.end()) return nullptr;
  auto object = objects_.find(it->second);
  return object == objects_.end() ? nullptr : &object->second;
}

Attributes* FakeToken::Find(CK_OBJECT_HANDLE handle) {
  return const_cast<Attributes*>(static_cast<const FakeToken*>(this)->Find(handle));
}

CK_OBJECT_HANDLE FakeToken::NewHandle(int object) {
  CK_OBJECT_HANDLE handle = next_handle_++;
  handles_[handle] = object;
  return handle;
}

CK_OBJECT_HANDLE FakeToken::Put(Attributes attributes) {
  int object = next_object_++;
  objects_[object] = std::move(attributes);
  return NewHandle(object);
}

CK_OBJECT_HANDLE FakeToken::ListTwice(CK_OBJECT_HANDLE handle) { return NewHandle(handles_.at(handle)); }

std::vector<CK_OBJECT_HANDLE> FakeToken::Objects(const Attributes& match) const {
  std::vector<CK_OBJECT_HANDLE> found;
  std::vector<int> seen;
  for (const auto& [handle, object] : handles_) {
    if (std::find(seen.begin(), seen.end(), object) != seen.end()) continue;
    auto it = objects_.find(object);
    if (it == objects_.end() || !Matches(it->second, match)) continue;
    seen.push_back(object);
    found.push_back(handle);
  }
  return found;
}

std::vector<CK_BYTE> FakeToken::Value(CK_OBJECT_HANDLE handle, CK_ATTRIBUTE_TYPE type) const {
  const Attributes* object = Find(handle);
  if (object == nullptr || !object->contains(type)) return {};
  return object->at(type);
}

CK_RV FakeToken::CreateObject(std::span<CK_ATTRIBUTE> attributes, CK_OBJECT_HANDLE& object) {
  ++changes;
  object = Put(FromTemplate(attributes));
  if (after_create) after_create();
  return CKR_OK;
}

CK_RV FakeToken::CopyObject(CK_OBJECT_HANDLE source, std::span<CK_ATTRIBUTE> attributes, CK_OBJECT_HANDLE& copy) {
  const Attributes* original = Find(source);
  if (original == nullptr) return CKR_OBJECT_HANDLE_INVALID;
  Attributes made = *original;
  for (auto& [type, value] : FromTemplate(attributes)) made[type] = value;
  ++changes;
  copy = Put(std::move(made));
  return CKR_OK;
}

CK_RV FakeToken::DestroyObject(CK_OBJECT_HANDLE object) {
  auto it = handles_.find(object);
  if (it == handles_.end() || !objects_.contains(it->second)) return CKR_OBJECT_HANDLE_INVALID;
  int number = it->second;
  objects_.erase(number);
  std::erase_if(handles_, [number](const auto& entry) { return entry.second == number; });
  ++changes;
  return CKR_OK;
}

CK_RV FakeToken::FindObjects(std::span<CK_ATTRIBUTE> match, std::vector<CK_OBJECT_HANDLE>& found) {
  found.clear();
  Attributes wanted = FromTemplate(match);
  for (const auto& [handle, object] : handles_) {
    auto it = objects_.find(object);
    if (it != objects_.end() && Matches(it->second, wanted)) found.push_back(handle);
  }
  if (after_find) after_find();
  return CKR_OK;
}

CK_RV FakeToken::GetAttributeValue(CK_OBJECT_HANDLE handle, std::span<CK_ATTRIBUTE> attributes) {
  const Attributes* object = Find(handle);
  if (object == nullptr) return CKR_OBJECT_HANDLE_INVALID;
  CK_RV rv = CKR_OK;
  for (CK_ATTRIBUTE& attribute : attributes) {
    auto it = object->find(attribute.type);
    if (it == object->end()) {
      attribute.ulValueLen = CK_UNAVAILABLE_INFORMATION;
      rv = CKR_ATTRIBUTE_TYPE_INVALID;
    } else if (attribute.type == CKA_VALUE && IsKey(*object)) {
      attribute.ulValueLen = CK_UNAVAILABLE_INFORMATION;
      rv = CKR_ATTRIBUTE_SENSITIVE;
    } else if (attribute.pValue == nullptr) {
      attribute.ulValueLen = it->second.size();
    } else if (attribute.ulValueLen < it->second.size()) {
      attribute.ulValueLen = CK_UNAVAILABLE_INFORMATION;
      rv = CKR_BUFFER_TOO_SMALL;
    } else {
      std::copy(it->second.begin(), it->second.end(), static_cast<CK_BYTE*>(attribute.pValue));
      attribute.ulValueLen = it->second.size();
    }
  }
  return rv;
}

CK_RV FakeToken::SetAttributeValue(CK_OBJECT_HANDLE handle, std::span<CK_ATTRIBUTE> attributes) {
  Attributes* object = Find(handle);
  if (object == nullptr) return CKR_OBJECT_HANDLE_INVALID;
  for (auto& [type, value] : FromTemplate(attributes)) (*object)[type] = value;
  ++changes;
  return CKR_OK;
}

CK_RV FakeToken::WrapKey(CK_MECHANISM_TYPE, CK_OBJECT_HANDLE wrapping_key, CK_OBJECT_HANDLE key,
                         std::vector<CK_BYTE>& wrapped) {
  const Attributes* wrapper = Find(wrapping_key);
  if (wrapper == nullptr) return CKR_WRAPPING_KEY_HANDLE_INVALID;
  const Attributes* object = Find(key);
  if (object == nullptr) return CKR_KEY_HANDLE_INVALID;
  if (!IsKey(*object)) return CKR_KEY_NOT_WRAPPABLE;
  if (ScalarOf<CK_BBOOL>(*object, CKA_EXTRACTABLE, CK_FALSE) != CK_TRUE) return CKR_KEY_UNEXTRACTABLE;
  // SoftHSM 2.6.1 cannot wrap Edwards keys (research §1).
  if (ScalarOf<CK_KEY_TYPE>(*object, CKA_KEY_TYPE, CKK_AES) == CKK_EC_EDWARDS) return CKR_KEY_NOT_WRAPPABLE;
  wrapped.assign(std::begin(kWrapMagic), std::end(kWrapMagic));
  for (CK_ATTRIBUTE_TYPE type : {CKA_VALUE, CKA_CLASS, CKA_KEY_TYPE}) {
    const Attributes& from = type == CKA_VALUE ? *wrapper : *object;
    const std::vector<CK_BYTE>& part = from.at(type);
    wrapped.push_back(static_cast<CK_BYTE>(part.size()));
    wrapped.insert(wrapped.end(), part.begin(), part.end());
  }
  const std::vector<CK_BYTE>& value = object->at(CKA_VALUE);
  wrapped.insert(wrapped.end(), value.begin(), value.end());
  return CKR_OK;
}

CK_RV FakeToken::UnwrapKey(CK_MECHANISM_TYPE, CK_OBJECT_HANDLE unwrapping_key, std::span<const CK_BYTE> wrapped,
                           std::span<CK_ATTRIBUTE> attributes, CK_OBJECT_HANDLE& key) {
  const Attributes* unwrapper = Find(unwrapping_key);
  if (unwrapper == nullptr) return CKR_UNWRAPPING_KEY_HANDLE_INVALID;
  std::size_t at = sizeof kWrapMagic;
  if (wrapped.size() < at || !std::equal(std::begin(kWrapMagic), std::end(kWrapMagic), wrapped.begin()))
    return CKR_WRAPPED_KEY_INVALID;
  std::vector<std::vector<CK_BYTE>> parts;
  for (int i = 0; i < 3; ++i) {
    if (at >= wrapped.size() || at + 1 + wrapped[at] > wrapped.size()) return CKR_WRAPPED_KEY_INVALID;
    parts.emplace_back(wrapped.begin() + static_cast<std::ptrdiff_t>(at + 1),
                       wrapped.begin() + static_cast<std::ptrdiff_t>(at + 1 + wrapped[at]));
    at += 1 + wrapped[at];
  }
  if (parts[0] != unwrapper->at(CKA_VALUE)) return CKR_WRAPPED_KEY_INVALID;
  Attributes made = FromTemplate(attributes);
  made[CKA_VALUE].assign(wrapped.begin() + static_cast<std::ptrdiff_t>(at), wrapped.end());
  ++changes;
  key = Put(std::move(made));
  if (after_create) after_create();
  return CKR_OK;
}

std::vector<CK_BYTE> Bytes(const std::string& text) { return {text.begin(), text.end()}; }

Attributes Certificate(const std::string& label, const std::string& id, const std::string& der) {
  return {{CKA_CLASS, Scalar<CK_OBJECT_CLASS>(CKO_CERTIFICATE)},
          {CKA_CERTIFICATE_TYPE, Scalar<CK_CERTIFICATE_TYPE>(CKC_X_509)},
          {CKA_TOKEN, Flag(true)},
          {CKA_PRIVATE, Flag(false)},
          {CKA_LABEL, Bytes(label)},
          {CKA_ID, Bytes(id)},
          {CKA_VALUE, Bytes(der)}};
}

Attributes DataObject(const std::string& label, const std::string& value) {
  return {{CKA_CLASS, Scalar<CK_OBJECT_CLASS>(CKO_DATA)}, {CKA_TOKEN, Flag(true)}, {CKA_PRIVATE, Flag(true)},
          {CKA_LABEL, Bytes(label)}, {CKA_APPLICATION, Bytes("test")}, {CKA_VALUE, Bytes(value)}};
}

Attributes SecretKey(const std::string& label, const std::string& id, const std::string& value, bool extractable) {
  return {{CKA_CLASS, Scalar<CK_OBJECT_CLASS>(CKO_SECRET_KEY)},
          {CKA_KEY_TYPE, Scalar<CK_KEY_TYPE>(CKK_AES)},
          {CKA_TOKEN, Flag(true)},
          {CKA_PRIVATE, Flag(true)},
          {CKA_SENSITIVE, Flag(true)},
          {CKA_EXTRACTABLE, Flag(extractable)},
          {CKA_WRAP_WITH_TRUSTED, Flag(true)},
          {CKA_LABEL, Bytes(label)},
          {CKA_ID, Bytes(id)},
          {CKA_VALUE, Bytes(value)}};
}

Attributes Ed25519Key(const std::string& label, const std::string& value) {
  return {{CKA_CLASS, Scalar<CK_OBJECT_CLASS>(CKO_PRIVATE_KEY)},
          {CKA_KEY_TYPE, Scalar<CK_KEY_TYPE>(CKK_EC_EDWARDS)},
          {CKA_TOKEN, Flag(true)},
          {CKA_PRIVATE, Flag(true)},
          {CKA_SENSITIVE, Flag(true)},
          {CKA_EXTRACTABLE, Flag(true)},
          {CKA_EC_PARAMS, Bytes("edwards25519")},
          {CKA_LABEL, Bytes(label)},
          {CKA_ID, Bytes(label)},
          {CKA_VALUE, Bytes(value)}};
}

Attributes DomainKey(const std::string& value, const std::string& label) {
  return {{CKA_CLASS, Scalar<CK_OBJECT_CLASS>(CKO_SECRET_KEY)},
          {CKA_KEY_TYPE, Scalar<CK_KEY_TYPE>(CKK_AES)},
          {CKA_TOKEN, Flag(true)},
          {CKA_PRIVATE, Flag(true)},
          {CKA_SENSITIVE, Flag(true)},
          {CKA_EXTRACTABLE, Flag(false)},
          {CKA_LABEL, Bytes(label)},
          {CKA_VALUE, Bytes(value)}};
}

}  // namespace p11ha::testing
