// SPDX-License-Identifier: Apache-2.0
// The one virtual slot and its token (PKCS#11 2.40 §5.5).
#include <openssl/evp.h>

#include <algorithm>
#include <cstring>

#include "provider/core/error.h"
#include "provider/core/log.h"
#include "provider/core/module.h"

namespace p11ha {
namespace {

void Pad(unsigned char* field, std::size_t size, const std::string& text) {
  std::memset(field, ' ', size);
  std::memcpy(field, text.data(), std::min(size, text.size()));
}

// Stable for the cluster: derived from what the operator named, not from any member.
std::string ClusterSerial(const config::Config& config) {
  std::string seed = config.cluster_label + "/" + std::to_string(config.slot_id);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(seed.data(), seed.size(), digest, &len, EVP_sha256(), nullptr);
  static const char* hex = "0123456789abcdef";
  std::string serial;
  for (int i = 0; i < 8; ++i) {
    serial += hex[digest[i] >> 4];
    serial += hex[digest[i] & 15];
  }
  return serial;
}

}  // namespace

CK_RV Module::GetSlotList(CK_BBOOL, CK_SLOT_ID_PTR list, CK_ULONG_PTR count) {
  if (count == nullptr) return CKR_ARGUMENTS_BAD;
  if (list == nullptr) {
    *count = 1;
    return CKR_OK;
  }
  if (*count < 1) {
    *count = 1;
    return CKR_BUFFER_TOO_SMALL;
  }
  list[0] = config_.slot_id;
  *count = 1;
  return CKR_OK;
}

void Module::GetSlotInfo(CK_SLOT_ID slot, CK_SLOT_INFO* info) {
  CheckSlot(slot);
  Pad(info->slotDescription, sizeof info->slotDescription, "p11ha virtual slot " + config_.cluster_label);
  Pad(info->manufacturerID, sizeof info->manufacturerID, "p11ha");
  // The virtual token is always present; with every member down, calls fail with
  // CKR_DEVICE_ERROR instead, and the slot is the same when they return.
  info->flags = CKF_TOKEN_PRESENT;
  info->hardwareVersion = {0, 1};
  info->firmwareVersion = {0, 1};
}

void Module::GetTokenInfo(CK_SLOT_ID slot, CK_TOKEN_INFO* info) {
  CheckSlot(slot);
  std::memset(info, 0, sizeof *info);
  Pad(info->label, sizeof info->label, config_.cluster_label);
  Pad(info->manufacturerID, sizeof info->manufacturerID, "p11ha");
  Pad(info->model, sizeof info->model, "HA cluster");
  Pad(info->serialNumber, sizeof info->serialNumber, ClusterSerial(config_));
  CK_FLAGS common = CKF_RNG | CKF_LOGIN_REQUIRED | CKF_USER_PIN_INITIALIZED | CKF_TOKEN_INITIALIZED;
  CK_ULONG min_pin = 0, max_pin = ~CK_ULONG{0};
  bool any = false;
  for (std::size_t i = 0; i < pool_.size(); ++i) {
    Member& member = pool_.at(i);
    if (member.epoch() == 0) continue;  // never reached: nothing known about its token
    const CK_TOKEN_INFO& t = member.token_info();
    common &= t.flags;
    min_pin = std::max(min_pin, t.ulMinPinLen);
    max_pin = std::min(max_pin, t.ulMaxPinLen);
    any = true;
  }
  if (!any) min_pin = 4, max_pin = 255;
  // Member PIN warnings (count low, final try, locked) are worth passing on: any member's.
  CK_FLAGS warnings = 0;
  for (std::size_t i = 0; i < pool_.size(); ++i)
    if (pool_.at(i).epoch() != 0)
      warnings |= pool_.at(i).token_info().flags &
                  (CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY | CKF_USER_PIN_LOCKED | CKF_SO_PIN_COUNT_LOW |
                   CKF_SO_PIN_FINAL_TRY | CKF_SO_PIN_LOCKED);
  info->flags = common | warnings;
  info->ulMaxSessionCount = CK_EFFECTIVELY_INFINITE;
  info->ulSessionCount = sessions_.Count();
  info->ulMaxRwSessionCount = CK_EFFECTIVELY_INFINITE;
  info->ulRwSessionCount = sessions_.ReadWriteCount();
  info->ulMinPinLen = min_pin;
  info->ulMaxPinLen = max_pin;
  info->ulTotalPublicMemory = CK_UNAVAILABLE_INFORMATION;
  info->ulFreePublicMemory = CK_UNAVAILABLE_INFORMATION;
  info->ulTotalPrivateMemory = CK_UNAVAILABLE_INFORMATION;
  info->ulFreePrivateMemory = CK_UNAVAILABLE_INFORMATION;
  info->hardwareVersion = {0, 1};
  info->firmwareVersion = {0, 1};
  Pad(info->utcTime, sizeof info->utcTime, "");
}

namespace {

// The mechanisms of every active member that has been reached (standby members when no active
// member has), so the list does not shrink while a member is briefly down.
MechanismTable VirtualMechanisms(MemberPool& pool) {
  std::vector<const MechanismTable*> active, standby;
  for (std::size_t i = 0; i < pool.size(); ++i) {
    Member& member = pool.at(i);
    if (member.epoch() == 0) continue;
    (member.standby() ? standby : active).push_back(&member.mechanisms());
  }
  return IntersectMechanisms(active.empty() ? standby : active);
}

}  // namespace

CK_RV Module::GetMechanismList(CK_SLOT_ID slot, CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR count) {
  CheckSlot(slot);
  if (count == nullptr) return CKR_ARGUMENTS_BAD;
  MechanismTable table = VirtualMechanisms(pool_);
  if (list == nullptr) {
    *count = table.size();
    return CKR_OK;
  }
  if (*count < table.size()) {
    *count = table.size();
    return CKR_BUFFER_TOO_SMALL;
  }
  std::size_t i = 0;
  for (const auto& [type, info] : table) list[i++] = type;
  *count = table.size();
  return CKR_OK;
}

void Module::GetMechanismInfo(CK_SLOT_ID slot, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO* info) {
  CheckSlot(slot);
  MechanismTable table = VirtualMechanisms(pool_);
  const CK_MECHANISM_INFO* found = FindMechanism(table, type);
  if (found == nullptr) ThrowCk(CKR_MECHANISM_INVALID, "mechanism not offered by every member");
  *info = *found;
}

CK_RV Module::InitPin(CK_SESSION_HANDLE handle, std::span<const CK_UTF8CHAR> pin) {
  auto session = SessionOrThrow(handle);
  if (login_.who() != LoginState::Who::kSecurityOfficer) return CKR_USER_NOT_LOGGED_IN;
  for (std::size_t i = 0; i < pool_.size(); ++i)
    if (!pool_.at(i).up()) {
      log::Get()->warn("C_InitPIN refused: member {} is down; the PIN must change on every member or none",
                       pool_.at(i).name());
      return CKR_DEVICE_ERROR;
    }
  std::lock_guard lock(session->mutex());
  for (std::size_t i = 0; i < pool_.size(); ++i) {
    Route route = RouteTo(*session, i);
    CK_RV rv = route.member->Call("C_InitPIN", CallKind::kStore, &CK_FUNCTION_LIST::C_InitPIN, route.session,
                                  const_cast<CK_UTF8CHAR_PTR>(pin.data()), CK_ULONG{pin.size()});
    if (rv != CKR_OK) {
      // Members before this one now carry the new user PIN; there is no old PIN to put back.
      if (i > 0) log::Get()->error("C_InitPIN failed on member {} after {} members changed", route.member->name(), i);
      return Outcome(*route.member, "C_InitPIN", rv);
    }
  }
  return CKR_OK;
}

CK_RV Module::SetPin(CK_SESSION_HANDLE handle, std::span<const CK_UTF8CHAR> old_pin,
                     std::span<const CK_UTF8CHAR> new_pin) {
  auto session = SessionOrThrow(handle);
  if (!session->read_write()) return CKR_SESSION_READ_ONLY;
  for (std::size_t i = 0; i < pool_.size(); ++i)
    if (!pool_.at(i).up()) {
      log::Get()->warn("C_SetPIN refused: member {} is down; the PIN must change on every member or none",
                       pool_.at(i).name());
      return CKR_DEVICE_ERROR;
    }
  std::lock_guard lock(session->mutex());
  auto call = [&](std::size_t i, std::span<const CK_UTF8CHAR> from, std::span<const CK_UTF8CHAR> to) {
    Route route = RouteTo(*session, i);
    return route.member->Call("C_SetPIN", CallKind::kStore, &CK_FUNCTION_LIST::C_SetPIN, route.session,
                              const_cast<CK_UTF8CHAR_PTR>(from.data()), CK_ULONG{from.size()},
                              const_cast<CK_UTF8CHAR_PTR>(to.data()), CK_ULONG{to.size()});
  };
  for (std::size_t i = 0; i < pool_.size(); ++i) {
    CK_RV rv = call(i, old_pin, new_pin);
    if (rv == CKR_OK) continue;
    // Every member or none: put the old PIN back where it already changed.
    for (std::size_t k = 0; k < i; ++k)
      if (call(k, new_pin, old_pin) != CKR_OK)
        log::Get()->error("C_SetPIN: member {} keeps the new PIN; fix it by hand", pool_.at(k).name());
    return Outcome(pool_.at(i), "C_SetPIN", rv);
  }
  login_.ReplacePin(SecureBytes(std::span<const std::uint8_t>(new_pin.data(), new_pin.size())));
  return CKR_OK;
}

}  // namespace p11ha
