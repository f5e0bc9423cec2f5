// SPDX-License-Identifier: Apache-2.0
// The member call that makes a new object, as Module::Replicate takes it. Apart from
// birth_copies.h so that module.h, which most of the provider includes, stays small.
#pragma once

#include <p11-kit/pkcs11.h>

#include <functional>
#include <span>

namespace p11ha {

// Makes the new objects on the home member: the member call that then reads them runs it first.
// It fills `made` and answers the member's CK_RV. It runs on a call worker, so it captures what
// it passes to the member by value.
using Creation =
    std::function<CK_RV(const CK_FUNCTION_LIST& functions, CK_SESSION_HANDLE session, std::span<CK_OBJECT_HANDLE> made)>;

}  // namespace p11ha
