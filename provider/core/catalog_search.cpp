// SPDX-License-Identifier: Apache-2.0
#include "provider/core/catalog_search.h"

#include <cstring>

#include "provider/core/object_catalog.h"

namespace p11ha {
namespace {

template <typename T>
bool ReadScalar(const CK_ATTRIBUTE& attribute, std::optional<T>& out) {
  if (out || attribute.pValue == nullptr || attribute.ulValueLen != sizeof(T)) return false;
  T value;
  std::memcpy(&value, attribute.pValue, sizeof value);
  out = value;
  return true;
}

bool ReadFlag(const CK_ATTRIBUTE& attribute, std::optional<bool>& out) {
  std::optional<CK_BBOOL> flag;
  // Any other byte matches nothing on a member; leaving it to the member keeps that answer.
  if (out || !ReadScalar(attribute, flag) || (*flag != CK_TRUE && *flag != CK_FALSE)) return false;
  out = *flag == CK_TRUE;
  return true;
}

template <typename Bytes>
bool ReadBytes(const CK_ATTRIBUTE& attribute, std::optional<Bytes>& out) {
  if (out || (attribute.pValue == nullptr && attribute.ulValueLen > 0)) return false;
  if (attribute.ulValueLen == CK_UNAVAILABLE_INFORMATION) return false;
  const auto* bytes = static_cast<const CK_BYTE*>(attribute.pValue);
  out = attribute.ulValueLen == 0 ? Bytes() : Bytes(bytes, bytes + attribute.ulValueLen);
  return true;
}

}  // namespace

std::optional<SearchTemplate> SearchTemplate::Parse(std::span<const CK_ATTRIBUTE> match) {
  SearchTemplate search;
  for (const CK_ATTRIBUTE& attribute : match) {
    bool understood = false;
    switch (attribute.type) {
      case CKA_CLASS: understood = ReadScalar(attribute, search.object_class_); break;
      case CKA_KEY_TYPE: understood = ReadScalar(attribute, search.key_type_); break;
      case CKA_TOKEN: understood = ReadFlag(attribute, search.token_); break;
      case CKA_PRIVATE: understood = ReadFlag(attribute, search.private_); break;
      case CKA_LABEL: understood = ReadBytes(attribute, search.label_); break;
      case CKA_ID: understood = ReadBytes(attribute, search.id_); break;
      default: break;
    }
    if (!understood) return std::nullopt;
  }
  return search;
}

bool SearchTemplate::Matches(const ObjectFacts& facts, const SearchKeys& keys) const {
  if (object_class_ && *object_class_ != facts.object_class) return false;
  if (token_ && *token_ != facts.token) return false;
  if (private_ && *private_ != facts.is_private) return false;
  if (key_type_ && keys.key_type != key_type_) return false;
  if (label_ && keys.label != label_) return false;
  if (id_ && keys.id != id_) return false;
  return true;
}

bool CatalogFreshness::Fresh(const Serving& serving, std::uint64_t login_generation) const {
  std::lock_guard lock(mu_);
  return complete_ && serving == serving_ && login_generation == login_generation_ &&
         Clock::now() - began_ < max_age_;
}

bool CatalogFreshness::BeginListing() {
  std::lock_guard lock(mu_);
  if (listing_) return false;
  listing_ = true;
  return true;
}

void CatalogFreshness::EndListing(bool complete, Serving serving, std::uint64_t login_generation,
                                  Clock::time_point began) {
  std::lock_guard lock(mu_);
  listing_ = false;
  complete_ = complete;
  if (!complete) return;
  serving_ = std::move(serving);
  login_generation_ = login_generation;
  began_ = began;
}

}  // namespace p11ha
