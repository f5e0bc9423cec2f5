// SPDX-License-Identifier: Apache-2.0
#include "replication/object_identity.h"

#include <openssl/evp.h>

#include <array>
#include <cstring>
#include <memory>

#include "replication/attributes.h"

namespace p11ha::replication {
namespace {

// Attributes whose bytes enter an attribute identity, by class.
std::vector<CK_ATTRIBUTE_TYPE> MaterialFor(CK_OBJECT_CLASS object_class, CK_KEY_TYPE key_type) {
  switch (object_class) {
    case CKO_PUBLIC_KEY:
      if (key_type == CKK_RSA) return {CKA_MODULUS, CKA_PUBLIC_EXPONENT};
      if (key_type == CKK_EC || key_type == CKK_EC_EDWARDS) return {CKA_EC_PARAMS, CKA_EC_POINT};
      return {CKA_ID, CKA_LABEL};
    case CKO_PRIVATE_KEY:
      if (key_type == CKK_RSA) return {CKA_MODULUS, CKA_PUBLIC_EXPONENT};
      return {CKA_EC_PARAMS, CKA_ID, CKA_LABEL};
    case CKO_SECRET_KEY:
      return {CKA_VALUE_LEN, CKA_ID, CKA_LABEL};
    case CKO_CERTIFICATE:
      return {CKA_CERTIFICATE_TYPE, CKA_VALUE};
    case CKO_DATA:
      return {CKA_APPLICATION, CKA_OBJECT_ID, CKA_LABEL, CKA_VALUE};
    default:
      return {CKA_ID, CKA_LABEL};
  }
}

class Digest {
 public:
  Digest() : ctx_(EVP_MD_CTX_new(), EVP_MD_CTX_free) { EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr); }
  void Add(CK_ULONG tag, const void* data, std::size_t size) {
    std::uint64_t header[2] = {tag, size};
    EVP_DigestUpdate(ctx_.get(), header, sizeof header);
    if (size > 0) EVP_DigestUpdate(ctx_.get(), data, size);
  }
  std::string Finish() {
    std::array<unsigned char, EVP_MAX_MD_SIZE> out{};
    unsigned int len = 0;
    EVP_DigestFinal_ex(ctx_.get(), out.data(), &len);
    return std::string(reinterpret_cast<const char*>(out.data()), len);
  }

 private:
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx_;
};

// A tag for the wrap fingerprint that no attribute type uses.
constexpr CK_ULONG kWrapTag = 0xF11A0001;

}  // namespace

CK_RV ReadSummary(TokenSession& token, CK_OBJECT_HANDLE object, CK_OBJECT_HANDLE domain_key,
                  const std::string& domain_label, ObjectSummary& out) {
  static constexpr CK_ATTRIBUTE_TYPE kFixed[] = {CKA_CLASS, CKA_KEY_TYPE, CKA_TOKEN, CKA_PRIVATE,
                                                 CKA_LABEL, CKA_ID,       CKA_APPLICATION, CKA_EXTRACTABLE,
                                                 CKA_SENSITIVE, CKA_WRAP_WITH_TRUSTED};
  // Only a tombstone's CKA_APPLICATION matters, and that is short: on other objects it is
  // absent, and asking again why would cost every key of a listing a second call.
  static constexpr CK_ATTRIBUTE_TYPE kShortOnly[] = {CKA_APPLICATION};
  AttributeList fixed;
  CK_RV rv = ReadAttributes(token, object, kFixed, fixed, kShortOnly);
  if (rv != CKR_OK) return rv;
  auto object_class = ScalarOf<CK_OBJECT_CLASS>(fixed, CKA_CLASS);
  if (!object_class) return CKR_OBJECT_HANDLE_INVALID;
  ObjectSummary summary;
  summary.object_class = *object_class;
  summary.key_type = ScalarOf<CK_KEY_TYPE>(fixed, CKA_KEY_TYPE).value_or(CK_UNAVAILABLE_INFORMATION);
  summary.token = ScalarOf<CK_BBOOL>(fixed, CKA_TOKEN).value_or(CK_FALSE) == CK_TRUE;
  summary.is_private = ScalarOf<CK_BBOOL>(fixed, CKA_PRIVATE).value_or(CK_FALSE) == CK_TRUE;
  summary.label = StringOf(fixed, CKA_LABEL);
  summary.has_label = FindAttribute(fixed, CKA_LABEL) != nullptr;
  if (const Attribute* id = FindAttribute(fixed, CKA_ID)) {
    summary.id = id->value;
    summary.has_id = true;
  }
  if (summary.object_class == CKO_SECRET_KEY && summary.label == domain_label) summary.kind = ObjectKind::kDomainKey;
  if (summary.object_class == CKO_DATA && StringOf(fixed, CKA_APPLICATION) == kP11haApplication)
    summary.kind = ObjectKind::kTombstone;

  Digest digest;
  digest.Add(CKA_CLASS, &summary.object_class, sizeof summary.object_class);
  digest.Add(CKA_KEY_TYPE, &summary.key_type, sizeof summary.key_type);
  CK_BBOOL token_flag = summary.token ? CK_TRUE : CK_FALSE;
  digest.Add(CKA_TOKEN, &token_flag, sizeof token_flag);

  if (IsKeyClass(summary.object_class) && summary.kind == ObjectKind::kApplication) {
    auto flag = [&fixed](CK_ATTRIBUTE_TYPE type) { return ScalarOf<CK_BBOOL>(fixed, type).value_or(CK_FALSE) == CK_TRUE; };
    // The domain key's unwrap template fixes CKA_PRIVATE, CKA_SENSITIVE and
    // CKA_WRAP_WITH_TRUSTED, so a key without all three cannot be copied even when it wraps.
    summary.unwrappable = !flag(CKA_EXTRACTABLE) || !summary.is_private || !flag(CKA_SENSITIVE) ||
                          !flag(CKA_WRAP_WITH_TRUSTED);
    if (!summary.unwrappable && domain_key != CK_INVALID_HANDLE) {
      std::vector<CK_BYTE> wrapped;
      rv = token.WrapKey(CKM_AES_KEY_WRAP_PAD, domain_key, object, wrapped);
      if (rv == CKR_OK) {
        digest.Add(kWrapTag, wrapped.data(), wrapped.size());
        summary.by_wrap = true;
      } else if (rv == CKR_KEY_NOT_WRAPPABLE || rv == CKR_KEY_UNEXTRACTABLE) {
        summary.unwrappable = true;
      } else if (rv != CKR_KEY_FUNCTION_NOT_PERMITTED && rv != CKR_MECHANISM_INVALID &&
                 rv != CKR_WRAPPING_KEY_HANDLE_INVALID && rv != CKR_USER_NOT_LOGGED_IN) {
        return rv;
      }
    }
  }
  if (!summary.by_wrap) {
    std::vector<CK_ATTRIBUTE_TYPE> types = MaterialFor(summary.object_class, summary.key_type);
    AttributeList material;
    rv = ReadAttributes(token, object, types, material);
    if (rv != CKR_OK) return rv;
    for (CK_ATTRIBUTE_TYPE type : types) {
      const Attribute* attribute = FindAttribute(material, type);
      digest.Add(type, attribute ? attribute->value.data() : nullptr, attribute ? attribute->value.size() : 0);
    }
  }
  summary.identity = digest.Finish();
  out = std::move(summary);
  return CKR_OK;
}

namespace {

std::string ClassName(const ObjectSummary& summary) {
  std::string type;
  switch (summary.key_type) {
    case CKK_RSA: type = "RSA "; break;
    case CKK_EC: type = "EC "; break;
    case CKK_EC_EDWARDS: type = "EdDSA "; break;
    case CKK_AES: type = "AES "; break;
    case CKK_GENERIC_SECRET: type = "generic "; break;
    default: break;
  }
  switch (summary.object_class) {
    case CKO_DATA: return "data object";
    case CKO_CERTIFICATE: return "certificate";
    case CKO_PUBLIC_KEY: return type + "public key";
    case CKO_PRIVATE_KEY: return type + "private key";
    case CKO_SECRET_KEY: return type + "secret key";
    default: return "object of class " + std::to_string(summary.object_class);
  }
}

// Labels come from the token and end up on a terminal.
std::string Printable(const std::string& text) {
  std::string out;
  for (unsigned char c : text) out += (c < 0x20 || c == 0x7f || c == '"') ? '?' : static_cast<char>(c);
  return out;
}

}  // namespace

std::string IdentityHex(const std::string& identity) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string hex;
  for (unsigned char byte : identity) {
    hex += kDigits[byte >> 4];
    hex += kDigits[byte & 0xf];
  }
  return hex;
}

std::string DescribeObject(const ObjectSummary& summary) {
  std::string text = ClassName(summary);
  text += summary.label.empty() ? " (no label)" : " \"" + Printable(summary.label) + "\"";
  if (!summary.id.empty()) text += " id " + IdentityHex(std::string(summary.id.begin(), summary.id.end()));
  return text;
}

OrphanName NameOfCreation(std::span<const CK_ATTRIBUTE> requested, std::optional<CK_OBJECT_CLASS> implied) {
  OrphanName name;
  name.object_class = implied;
  for (const CK_ATTRIBUTE& attribute : requested) {
    if (attribute.pValue == nullptr && attribute.ulValueLen > 0) continue;
    const auto* bytes = static_cast<const CK_BYTE*>(attribute.pValue);
    if (attribute.type == CKA_CLASS && attribute.ulValueLen == sizeof(CK_OBJECT_CLASS)) {
      CK_OBJECT_CLASS object_class = 0;
      std::memcpy(&object_class, attribute.pValue, sizeof object_class);
      name.object_class = object_class;
    } else if (attribute.type == CKA_LABEL) {
      name.label = std::string(bytes, bytes + attribute.ulValueLen);
    } else if (attribute.type == CKA_ID) {
      name.id = std::vector<CK_BYTE>(bytes, bytes + attribute.ulValueLen);
    }
  }
  return name;
}

std::vector<OrphanName> NamesOfCreation(bool token, std::span<const CK_ATTRIBUTE> requested,
                                        std::optional<CK_OBJECT_CLASS> implied) {
  if (!token) return {};
  return {NameOfCreation(requested, implied)};
}

}  // namespace p11ha::replication
