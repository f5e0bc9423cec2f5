// SPDX-License-Identifier: Apache-2.0
#include "replication/tombstone.h"

#include <cstring>
#include <string_view>

#include "replication/attributes.h"
#include "replication/object_identity.h"

namespace p11ha::replication {
namespace {

constexpr std::string_view kHeader = "p11ha-tombstone v1 ";

int Nibble(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

}  // namespace

std::string FormatTombstone(const std::string& identity) {
  return std::string(kHeader) + IdentityHex(identity) + "\n";
}

std::optional<std::string> ParseTombstone(const std::vector<CK_BYTE>& value) {
  std::string_view text(reinterpret_cast<const char*>(value.data()), value.size());
  if (!text.starts_with(kHeader) || !text.ends_with('\n')) return std::nullopt;
  text.remove_prefix(kHeader.size());
  text.remove_suffix(1);
  if (text.size() != 64) return std::nullopt;
  std::string identity;
  for (std::size_t i = 0; i < text.size(); i += 2) {
    int hi = Nibble(text[i]), lo = Nibble(text[i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    identity += static_cast<char>(hi << 4 | lo);
  }
  return identity;
}

CK_RV CreateTombstone(TokenSession& token, const std::string& identity, bool is_private, CK_OBJECT_HANDLE& out) {
  CK_OBJECT_CLASS data_class = CKO_DATA;
  CK_BBOOL yes = CK_TRUE, privacy = is_private ? CK_TRUE : CK_FALSE;
  std::string value = FormatTombstone(identity);
  std::string application = kP11haApplication, label = kTombstoneLabel;
  CK_ATTRIBUTE attributes[] = {{CKA_CLASS, &data_class, sizeof data_class},
                               {CKA_TOKEN, &yes, sizeof yes},
                               {CKA_PRIVATE, &privacy, sizeof privacy},
                               {CKA_APPLICATION, application.data(), application.size()},
                               {CKA_LABEL, label.data(), label.size()},
                               {CKA_VALUE, value.data(), value.size()}};
  return token.CreateObject(attributes, out);
}

CK_RV FindTombstones(TokenSession& token, std::vector<Tombstone>& out) {
  out.clear();
  CK_OBJECT_CLASS data_class = CKO_DATA;
  std::string application = kP11haApplication;
  CK_ATTRIBUTE match[] = {{CKA_CLASS, &data_class, sizeof data_class},
                          {CKA_APPLICATION, application.data(), application.size()}};
  std::vector<CK_OBJECT_HANDLE> found;
  CK_RV rv = token.FindObjects(match, found);
  if (rv != CKR_OK) return rv;
  static constexpr CK_ATTRIBUTE_TYPE kValue[] = {CKA_VALUE};
  for (CK_OBJECT_HANDLE handle : found) {
    AttributeList value;
    rv = ReadAttributes(token, handle, kValue, value);
    // Destroyed by another process between the find and the read.
    if (rv == CKR_OBJECT_HANDLE_INVALID) continue;
    if (rv != CKR_OK) return rv;
    const Attribute* attribute = FindAttribute(value, CKA_VALUE);
    if (attribute == nullptr) continue;
    if (auto identity = ParseTombstone(attribute->value)) out.push_back({handle, *identity});
  }
  return CKR_OK;
}

}  // namespace p11ha::replication
