// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <p11-kit/pkcs11.h>

#include <map>
#include <vector>

namespace p11ha {

// What a token offers: mechanism → info. The virtual slot shows the intersection.
using MechanismTable = std::map<CK_MECHANISM_TYPE, CK_MECHANISM_INFO>;

// Mechanisms present in every table, with key sizes narrowed and flags intersected.
MechanismTable IntersectMechanisms(const std::vector<const MechanismTable*>& tables);

}  // namespace p11ha
