// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <p11-kit/pkcs11.h>

#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "replication/token_session.h"

namespace p11ha::replication {

// One attribute read from a token, owning its bytes.
struct Attribute {
  CK_ATTRIBUTE_TYPE type = 0;
  std::vector<CK_BYTE> value;
};
using AttributeList = std::vector<Attribute>;

// Reads those of `types` the object has and the caller may see. Absent, sensitive and
// unreadable attributes are left out; any other failure is returned. Those of `types` also in
// `short_only` are wanted only when short: one the first read (256 bytes each) leaves
// unavailable is taken as absent, without a second call to tell why.
CK_RV ReadAttributes(TokenSession& token, CK_OBJECT_HANDLE object, std::span<const CK_ATTRIBUTE_TYPE> types,
                     AttributeList& out, std::span<const CK_ATTRIBUTE_TYPE> short_only = {});

// A CK_ATTRIBUTE array pointing into `list`, which must outlive it.
std::vector<CK_ATTRIBUTE> AsTemplate(AttributeList& list);

const Attribute* FindAttribute(const AttributeList& list, CK_ATTRIBUTE_TYPE type);

template <typename T>
std::optional<T> ScalarOf(const AttributeList& list, CK_ATTRIBUTE_TYPE type) {
  const Attribute* attribute = FindAttribute(list, type);
  if (attribute == nullptr || attribute->value.size() != sizeof(T)) return std::nullopt;
  T value;
  std::memcpy(&value, attribute->value.data(), sizeof value);
  return value;
}

inline std::string StringOf(const AttributeList& list, CK_ATTRIBUTE_TYPE type) {
  const Attribute* attribute = FindAttribute(list, type);
  return attribute ? std::string(attribute->value.begin(), attribute->value.end()) : std::string();
}

// What a copy of an object carries, by class. Keys (private, secret) list what SoftHSM accepts in
// an unwrap template; public objects what it accepts in C_CreateObject (research §1, §6).
std::span<const CK_ATTRIBUTE_TYPE> CopiedAttributes(CK_OBJECT_CLASS object_class);

// Attributes only the token computes, or that must not be passed empty; dropped from templates.
bool DropFromTemplate(const Attribute& attribute);

}  // namespace p11ha::replication
