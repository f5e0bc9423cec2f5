// SPDX-License-Identifier: Apache-2.0
#include "fixture.h"

#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdio>
#include <stdexcept>
#include <utility>

namespace p11ha::conformance {

const Bytes kP256Params = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
const Bytes kP384Params = {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22};

std::string RvName(CK_RV rv) {
  switch (rv) {
#define P11HA_RV(name) \
  case name:           \
    return #name;
    P11HA_RV(CKR_OK)
    P11HA_RV(CKR_HOST_MEMORY)
    P11HA_RV(CKR_SLOT_ID_INVALID)
    P11HA_RV(CKR_GENERAL_ERROR)
    P11HA_RV(CKR_FUNCTION_FAILED)
    P11HA_RV(CKR_ARGUMENTS_BAD)
    P11HA_RV(CKR_ATTRIBUTE_READ_ONLY)
    P11HA_RV(CKR_ATTRIBUTE_SENSITIVE)
    P11HA_RV(CKR_ATTRIBUTE_TYPE_INVALID)
    P11HA_RV(CKR_ATTRIBUTE_VALUE_INVALID)
    P11HA_RV(CKR_ACTION_PROHIBITED)
    P11HA_RV(CKR_DATA_INVALID)
    P11HA_RV(CKR_DATA_LEN_RANGE)
    P11HA_RV(CKR_DEVICE_ERROR)
    P11HA_RV(CKR_ENCRYPTED_DATA_INVALID)
    P11HA_RV(CKR_ENCRYPTED_DATA_LEN_RANGE)
    P11HA_RV(CKR_FUNCTION_NOT_SUPPORTED)
    P11HA_RV(CKR_KEY_HANDLE_INVALID)
    P11HA_RV(CKR_KEY_SIZE_RANGE)
    P11HA_RV(CKR_KEY_TYPE_INCONSISTENT)
    P11HA_RV(CKR_KEY_INDIGESTIBLE)
    P11HA_RV(CKR_KEY_FUNCTION_NOT_PERMITTED)
    P11HA_RV(CKR_KEY_NOT_WRAPPABLE)
    P11HA_RV(CKR_KEY_UNEXTRACTABLE)
    P11HA_RV(CKR_MECHANISM_INVALID)
    P11HA_RV(CKR_MECHANISM_PARAM_INVALID)
    P11HA_RV(CKR_OBJECT_HANDLE_INVALID)
    P11HA_RV(CKR_OPERATION_ACTIVE)
    P11HA_RV(CKR_OPERATION_NOT_INITIALIZED)
    P11HA_RV(CKR_PIN_INCORRECT)
    P11HA_RV(CKR_PIN_LEN_RANGE)
    P11HA_RV(CKR_SESSION_CLOSED)
    P11HA_RV(CKR_SESSION_COUNT)
    P11HA_RV(CKR_SESSION_HANDLE_INVALID)
    P11HA_RV(CKR_SESSION_PARALLEL_NOT_SUPPORTED)
    P11HA_RV(CKR_SESSION_READ_ONLY)
    P11HA_RV(CKR_SESSION_EXISTS)
    P11HA_RV(CKR_SESSION_READ_ONLY_EXISTS)
    P11HA_RV(CKR_SESSION_READ_WRITE_SO_EXISTS)
    P11HA_RV(CKR_SIGNATURE_INVALID)
    P11HA_RV(CKR_SIGNATURE_LEN_RANGE)
    P11HA_RV(CKR_TEMPLATE_INCOMPLETE)
    P11HA_RV(CKR_TEMPLATE_INCONSISTENT)
    P11HA_RV(CKR_TOKEN_NOT_PRESENT)
    P11HA_RV(CKR_TOKEN_WRITE_PROTECTED)
    P11HA_RV(CKR_UNWRAPPING_KEY_HANDLE_INVALID)
    P11HA_RV(CKR_USER_ALREADY_LOGGED_IN)
    P11HA_RV(CKR_USER_NOT_LOGGED_IN)
    P11HA_RV(CKR_USER_PIN_NOT_INITIALIZED)
    P11HA_RV(CKR_USER_TYPE_INVALID)
    P11HA_RV(CKR_USER_ANOTHER_ALREADY_LOGGED_IN)
    P11HA_RV(CKR_WRAPPED_KEY_INVALID)
    P11HA_RV(CKR_WRAPPED_KEY_LEN_RANGE)
    P11HA_RV(CKR_WRAPPING_KEY_HANDLE_INVALID)
    P11HA_RV(CKR_WRAPPING_KEY_TYPE_INCONSISTENT)
    P11HA_RV(CKR_RANDOM_SEED_NOT_SUPPORTED)
    P11HA_RV(CKR_RANDOM_NO_RNG)
    P11HA_RV(CKR_BUFFER_TOO_SMALL)
    P11HA_RV(CKR_CRYPTOKI_NOT_INITIALIZED)
    P11HA_RV(CKR_CRYPTOKI_ALREADY_INITIALIZED)
#undef P11HA_RV
    default:
      break;
  }
  char hex[32];
  std::snprintf(hex, sizeof hex, "CKR_0x%08lx", rv);
  return hex;
}

Bytes ToBytes(std::string_view text) { return Bytes(text.begin(), text.end()); }

std::string ToString(const Bytes& bytes) { return std::string(bytes.begin(), bytes.end()); }

std::string UniqueLabel(std::string_view stem) {
  static int counter = 0;
  return std::string(stem) + "-" + std::to_string(getpid()) + "-" + std::to_string(++counter);
}

Attributes& Attributes::Bool(CK_ATTRIBUTE_TYPE type, bool flag) {
  return Data(type, Bytes{static_cast<CK_BYTE>(flag ? CK_TRUE : CK_FALSE)});
}

Attributes& Attributes::Ulong(CK_ATTRIBUTE_TYPE type, CK_ULONG number) {
  const auto* raw = reinterpret_cast<const CK_BYTE*>(&number);
  return Data(type, Bytes(raw, raw + sizeof number));
}

Attributes& Attributes::Data(CK_ATTRIBUTE_TYPE type, const Bytes& bytes) {
  const auto existing = std::find(types_.begin(), types_.end(), type);
  if (existing != types_.end()) {
    values_[static_cast<size_t>(existing - types_.begin())] = bytes;
  } else {
    types_.push_back(type);
    values_.push_back(bytes);
  }
  return *this;
}

Attributes& Attributes::Text(CK_ATTRIBUTE_TYPE type, std::string_view text) {
  return Data(type, ToBytes(text));
}

Attributes& Attributes::Merge(const Attributes& other) {
  for (size_t i = 0; i < other.types_.size(); ++i) Data(other.types_[i], other.values_[i]);
  return *this;
}

CK_ATTRIBUTE_PTR Attributes::get() {
  attributes_.clear();
  for (size_t i = 0; i < types_.size(); ++i) {
    attributes_.push_back(CK_ATTRIBUTE{types_[i], values_[i].empty() ? nullptr : values_[i].data(),
                                       static_cast<CK_ULONG>(values_[i].size())});
  }
  return attributes_.empty() ? nullptr : attributes_.data();
}

Session::Session(CK_FUNCTION_LIST_PTR p11, CK_SLOT_ID slot, CK_FLAGS flags) : p11_(p11) {
  REQUIRE_RV(p11_->C_OpenSession(slot, flags, nullptr, nullptr, &handle_), CKR_OK);
  open_ = true;
}

Session::Session(Session&& other) noexcept
    : p11_(other.p11_), handle_(other.handle_), open_(std::exchange(other.open_, false)) {}

Session::~Session() {
  if (open_) p11_->C_CloseSession(handle_);
}

CK_STATE Session::State() const {
  CK_SESSION_INFO info{};
  REQUIRE_RV(p11_->C_GetSessionInfo(handle_, &info), CKR_OK);
  return info.state;
}

void Session::Login(CK_USER_TYPE user, std::string_view pin) const {
  std::string copy(pin);
  REQUIRE_RV(p11_->C_Login(handle_, user, reinterpret_cast<CK_UTF8CHAR_PTR>(copy.data()),
                           static_cast<CK_ULONG>(copy.size())),
             CKR_OK);
}

CK_RV Session::Close() {
  open_ = false;
  return p11_->C_CloseSession(handle_);
}

CK_SLOT_ID FindSlot(CK_FUNCTION_LIST_PTR p11, std::string_view token_label) {
  CK_ULONG count = 0;
  if (p11->C_GetSlotList(CK_TRUE, nullptr, &count) != CKR_OK) {
    throw std::runtime_error("C_GetSlotList failed");
  }
  std::vector<CK_SLOT_ID> slots(count);
  if (p11->C_GetSlotList(CK_TRUE, slots.data(), &count) != CKR_OK) {
    throw std::runtime_error("C_GetSlotList failed");
  }
  std::string padded(token_label);
  padded.resize(sizeof(CK_TOKEN_INFO::label), ' ');
  for (CK_ULONG i = 0; i < count; ++i) {
    CK_TOKEN_INFO info{};
    if (p11->C_GetTokenInfo(slots[i], &info) != CKR_OK) continue;
    if (std::equal(padded.begin(), padded.end(), info.label)) return slots[i];
  }
  throw std::runtime_error("no slot has a token labelled " + std::string(token_label));
}

Fixture::Fixture() : p11(Module()), slot(FindSlot(p11, CurrentTarget().token_label)) {
  p11->C_CloseAllSessions(slot);
}

Fixture::~Fixture() { p11->C_CloseAllSessions(slot); }

bool Fixture::HasMechanism(CK_MECHANISM_TYPE mechanism) const {
  CK_MECHANISM_INFO info{};
  const CK_RV rv = p11->C_GetMechanismInfo(slot, mechanism, &info);
  REQUIRE((rv == CKR_OK || rv == CKR_MECHANISM_INVALID));
  return rv == CKR_OK;
}

Session Fixture::Open(CK_FLAGS flags) const { return Session(p11, slot, flags); }

Session Fixture::OpenLoggedIn(CK_FLAGS flags) const {
  Session session(p11, slot, flags);
  session.Login();
  return session;
}

CK_OBJECT_HANDLE Fixture::Create(CK_SESSION_HANDLE session, Attributes& attributes) const {
  CK_OBJECT_HANDLE object = CK_INVALID_HANDLE;
  REQUIRE_RV(p11->C_CreateObject(session, attributes.get(), attributes.size(), &object), CKR_OK);
  return object;
}

CK_OBJECT_HANDLE Fixture::CreateData(CK_SESSION_HANDLE session, std::string_view label,
                                     bool token, bool is_private) const {
  Attributes data;
  data.Ulong(CKA_CLASS, CKO_DATA)
      .Bool(CKA_TOKEN, token)
      .Bool(CKA_PRIVATE, is_private)
      .Text(CKA_LABEL, label)
      .Text(CKA_APPLICATION, "p11ha-conformance")
      .Text(CKA_VALUE, "some data");
  return Create(session, data);
}

Bytes Fixture::Attribute(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object,
                         CK_ATTRIBUTE_TYPE type) const {
  CK_ATTRIBUTE attribute{type, nullptr, 0};
  REQUIRE_RV(p11->C_GetAttributeValue(session, object, &attribute, 1), CKR_OK);
  Bytes value(attribute.ulValueLen);
  attribute.pValue = value.data();
  REQUIRE_RV(p11->C_GetAttributeValue(session, object, &attribute, 1), CKR_OK);
  value.resize(attribute.ulValueLen);
  return value;
}

CK_ULONG Fixture::UlongAttribute(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object,
                                 CK_ATTRIBUTE_TYPE type) const {
  CK_ULONG number = 0;
  CK_ATTRIBUTE attribute{type, &number, sizeof number};
  REQUIRE_RV(p11->C_GetAttributeValue(session, object, &attribute, 1), CKR_OK);
  REQUIRE(attribute.ulValueLen == sizeof number);
  return number;
}

bool Fixture::BoolAttribute(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object,
                            CK_ATTRIBUTE_TYPE type) const {
  CK_BBOOL flag = CK_FALSE;
  CK_ATTRIBUTE attribute{type, &flag, sizeof flag};
  REQUIRE_RV(p11->C_GetAttributeValue(session, object, &attribute, 1), CKR_OK);
  return flag == CK_TRUE;
}

std::vector<CK_OBJECT_HANDLE> Fixture::Find(CK_SESSION_HANDLE session, Attributes& attributes,
                                            CK_ULONG batch) const {
  REQUIRE_RV(p11->C_FindObjectsInit(session, attributes.get(), attributes.size()), CKR_OK);
  std::vector<CK_OBJECT_HANDLE> found;
  for (;;) {
    std::vector<CK_OBJECT_HANDLE> chunk(batch);
    CK_ULONG count = 0;
    REQUIRE_RV(p11->C_FindObjects(session, chunk.data(), batch, &count), CKR_OK);
    REQUIRE(count <= batch);
    found.insert(found.end(), chunk.begin(), chunk.begin() + static_cast<long>(count));
    if (count < batch) break;
  }
  REQUIRE_RV(p11->C_FindObjectsFinal(session), CKR_OK);
  return found;
}

std::vector<CK_OBJECT_HANDLE> Fixture::FindByLabel(CK_SESSION_HANDLE session,
                                                   std::string_view label) const {
  Attributes by_label;
  by_label.Text(CKA_LABEL, label);
  return Find(session, by_label);
}

CK_OBJECT_HANDLE Fixture::GenerateAes(CK_SESSION_HANDLE session,
                                      const Attributes& extra) const {
  Attributes key;
  key.Ulong(CKA_CLASS, CKO_SECRET_KEY)
      .Ulong(CKA_KEY_TYPE, CKK_AES)
      .Ulong(CKA_VALUE_LEN, 32)
      .Bool(CKA_TOKEN, false)
      .Bool(CKA_PRIVATE, true)
      .Bool(CKA_SENSITIVE, true)
      .Bool(CKA_ENCRYPT, true)
      .Bool(CKA_DECRYPT, true)
      .Merge(extra);
  CK_MECHANISM mechanism{CKM_AES_KEY_GEN, nullptr, 0};
  CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
  REQUIRE_RV(p11->C_GenerateKey(session, &mechanism, key.get(), key.size(), &handle), CKR_OK);
  return handle;
}

CK_OBJECT_HANDLE Fixture::ImportAes(CK_SESSION_HANDLE session, const Bytes& value,
                                    const Attributes& extra) const {
  Attributes key;
  key.Ulong(CKA_CLASS, CKO_SECRET_KEY)
      .Ulong(CKA_KEY_TYPE, CKK_AES)
      .Bool(CKA_TOKEN, false)
      .Bool(CKA_PRIVATE, true)
      .Bool(CKA_ENCRYPT, true)
      .Bool(CKA_DECRYPT, true)
      .Data(CKA_VALUE, value)
      .Merge(extra);
  return Create(session, key);
}

KeyPair Fixture::GenerateRsa(CK_SESSION_HANDLE session, bool token, std::string_view id) const {
  Attributes public_template;
  public_template.Bool(CKA_TOKEN, token)
      .Bool(CKA_VERIFY, true)
      .Ulong(CKA_MODULUS_BITS, 2048)
      .Data(CKA_PUBLIC_EXPONENT, Bytes{0x01, 0x00, 0x01})
      .Text(CKA_ID, id)
      .Text(CKA_LABEL, id);
  Attributes private_template;
  private_template.Bool(CKA_TOKEN, token)
      .Bool(CKA_PRIVATE, true)
      .Bool(CKA_SENSITIVE, true)
      .Bool(CKA_SIGN, true)
      .Text(CKA_ID, id)
      .Text(CKA_LABEL, id);
  CK_MECHANISM mechanism{CKM_RSA_PKCS_KEY_PAIR_GEN, nullptr, 0};
  KeyPair pair;
  REQUIRE_RV(p11->C_GenerateKeyPair(session, &mechanism, public_template.get(),
                                    public_template.size(), private_template.get(),
                                    private_template.size(), &pair.public_key, &pair.private_key),
             CKR_OK);
  return pair;
}

KeyPair Fixture::GenerateEc(CK_SESSION_HANDLE session, const Bytes& ec_params) const {
  Attributes public_template;
  public_template.Bool(CKA_TOKEN, false).Bool(CKA_VERIFY, true).Data(CKA_EC_PARAMS, ec_params);
  Attributes private_template;
  private_template.Bool(CKA_TOKEN, false)
      .Bool(CKA_PRIVATE, true)
      .Bool(CKA_SENSITIVE, true)
      .Bool(CKA_SIGN, true);
  CK_MECHANISM mechanism{CKM_EC_KEY_PAIR_GEN, nullptr, 0};
  KeyPair pair;
  REQUIRE_RV(p11->C_GenerateKeyPair(session, &mechanism, public_template.get(),
                                    public_template.size(), private_template.get(),
                                    private_template.size(), &pair.public_key, &pair.private_key),
             CKR_OK);
  return pair;
}

KeyPair Fixture::SharedRsa(CK_SESSION_HANDLE logged_in_session) const {
  constexpr std::string_view kId = "conformance-rsa-2048";
  auto find = [&](CK_OBJECT_CLASS object_class) {
    Attributes query;
    query.Ulong(CKA_CLASS, object_class).Text(CKA_ID, kId);
    return Find(logged_in_session, query);
  };
  std::vector<CK_OBJECT_HANDLE> public_keys = find(CKO_PUBLIC_KEY);
  std::vector<CK_OBJECT_HANDLE> private_keys = find(CKO_PRIVATE_KEY);
  if (public_keys.empty() && private_keys.empty()) {
    return GenerateRsa(logged_in_session, /*token=*/true, kId);
  }
  REQUIRE(public_keys.size() == 1);
  REQUIRE(private_keys.size() == 1);
  return KeyPair{public_keys[0], private_keys[0]};
}

}  // namespace p11ha::conformance
