// SPDX-License-Identifier: Apache-2.0
// The module under test: which one (P11HA_CONFORMANCE_TARGET), its token farm, and the one
// place where an expected CK_RV may depend on the target.
#pragma once

#include <p11-kit/pkcs11.h>

#include <string>
#include <string_view>

namespace p11ha::conformance {

enum class TargetKind { kSoftHsm, kP11ha };

struct Target {
  TargetKind kind = TargetKind::kSoftHsm;
  int members = 1;
  std::string name;         // as given: "softhsm", "p11ha:2"
  std::string module_path;  // the .so the suite dlopens
  std::string token_label;  // the token whose slot every case uses
};

// Reads P11HA_CONFORMANCE_TARGET, builds a fresh farm with make-farm.sh, points SOFTHSM2_CONF
// and P11HA_CONFIG at it, loads the module and calls C_Initialize. Throws std::runtime_error.
void SetUpTarget();
// C_Finalize, unload, and delete the farm (kept when P11HA_CONFORMANCE_KEEP_FARM is set).
void TearDownTarget();

const Target& CurrentTarget();
CK_FUNCTION_LIST_PTR Module();

// C_Initialize the way the suite always does it: OS locking, no mutex callbacks.
CK_RV InitializeModule();

// A place where p11ha deliberately returns something other than SoftHSM 2.6.1, because SoftHSM
// deviates from the spec. Every id must have an entry in DIVERGENCES.md.
struct Divergence {
  std::string_view id;
  CK_RV softhsm;
  CK_RV p11ha;
};

// The rv the current target must return. Throws if `divergence.id` is not documented.
CK_RV Expected(const Divergence& divergence);

}  // namespace p11ha::conformance
