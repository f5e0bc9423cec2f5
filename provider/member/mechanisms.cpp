// SPDX-License-Identifier: Apache-2.0
#include "provider/member/mechanisms.h"

#include <algorithm>

namespace p11ha {

MechanismTable IntersectMechanisms(const std::vector<const MechanismTable*>& tables) {
  if (tables.empty()) return {};
  MechanismTable result = *tables.front();
  for (std::size_t i = 1; i < tables.size(); ++i) {
    for (auto it = result.begin(); it != result.end();) {
      auto other = tables[i]->find(it->first);
      if (other == tables[i]->end()) {
        it = result.erase(it);
        continue;
      }
      CK_MECHANISM_INFO& info = it->second;
      info.ulMinKeySize = std::max(info.ulMinKeySize, other->second.ulMinKeySize);
      info.ulMaxKeySize = std::min(info.ulMaxKeySize, other->second.ulMaxKeySize);
      info.flags &= other->second.flags;
      ++it;
    }
  }
  return result;
}

}  // namespace p11ha
