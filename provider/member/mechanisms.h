// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <p11-kit/pkcs11.h>

#include <utility>
#include <vector>

namespace p11ha {

// What a token offers, in the token's own order: clients such as pkcs11-tool --test pick the
// first suitable mechanism of the list, so the order is part of the behaviour.
using MechanismTable = std::vector<std::pair<CK_MECHANISM_TYPE, CK_MECHANISM_INFO>>;

const CK_MECHANISM_INFO* FindMechanism(const MechanismTable& table, CK_MECHANISM_TYPE type);

// Mechanisms present in every table, in the first table's order, with key sizes narrowed and
// flags intersected.
MechanismTable IntersectMechanisms(const std::vector<const MechanismTable*>& tables);

}  // namespace p11ha
