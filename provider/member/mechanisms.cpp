// SPDX-License-Identifier: Apache-2.0
#include "provider/member/mechanisms.h"

#include <algorithm>

namespace p11ha {

const CK_MECHANISM_INFO* FindMechanism(const MechanismTable& table, CK_MECHANISM_TYPE type) {
  for (const auto& [t, info] : table)
    if (t == type) return &info;
  return nullptr;
}

MechanismTable IntersectMechanisms(const std::vector<const MechanismTable*>& tables) {
  if (tables.empty()) return {};
  MechanismTable result;
  for (const auto& [type, first] : *tables.front()) {
    CK_MECHANISM_INFO info = first;
    bool everywhere = true;
    for (std::size_t i = 1; i < tables.size() && everywhere; ++i) {
      const CK_MECHANISM_INFO* other = FindMechanism(*tables[i], type);
      if (other == nullptr) {
        everywhere = false;
        break;
      }
      info.ulMinKeySize = std::max(info.ulMinKeySize, other->ulMinKeySize);
      info.ulMaxKeySize = std::min(info.ulMaxKeySize, other->ulMaxKeySize);
      info.flags &= other->flags;
    }
    if (everywhere) result.emplace_back(type, info);
  }
  return result;
}

}  // namespace p11ha
