// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <p11-kit/pkcs11.h>

#include <cstddef>
#include <map>
#include <optional>
#include <ostream>
#include <set>
#include <string>
#include <vector>

#include "config/config.h"
#include "replication/check_value.h"
#include "replication/object_identity.h"
#include "tools/cli/cluster.h"

namespace p11ha::cli {

// One admission check's verdict, printed as `  ok    <check>: detail` (or FAIL, warn, skip).
struct CheckLine {
  enum class Level { kOk, kWarn, kFail, kSkip };
  Level level = Level::kOk;
  std::string check;
  std::string detail;
  std::string fix;  // for kFail: what the operator does about it
};

// One object as one member holds it.
struct HeldObject {
  CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
  replication::ObjectSummary summary;
};

// A member's token objects by identity: its application objects and p11ha's tombstones (the
// domain key is left out), and the identities its tombstones name.
struct MemberObjects {
  bool scanned = false;
  std::string error;  // why the scan failed
  std::map<std::string, std::vector<HeldObject>> objects;
  std::set<std::string> tombstoned;
  std::size_t application = 0;  // application objects (p11ha's own not counted)
};

// What the checks found, and what `member add` works from when they all pass.
struct Admission {
  std::size_t target = 0;  // NAME's index in the config
  std::vector<CheckLine> lines;
  // Other members reached and holding the cluster's domain key: the sources and targets of copies.
  std::vector<std::size_t> peers;
  std::optional<replication::CheckValue> domain;  // the majority of the other reached members
  // By member index: its handle of the cluster's domain key (CK_INVALID_HANDLE if none) and
  // its objects (scanned for the peers and the target only).
  std::vector<CK_OBJECT_HANDLE> domain_keys;
  std::vector<MemberObjects> objects;

  bool Failed() const;
  std::size_t Failures() const;
};

struct AdmissionOptions {
  bool adding = false;             // `member add`: a non-empty target fails unless `preserve`
  bool preserve_existing = false;  // --preserve-existing
};

// Runs every check of NAME (index `target`) against the other configured members the cluster
// reached (issue 5: Luna's HA prerequisites). Reads only; writes nothing on any member.
Admission CheckAdmission(Cluster& cluster, const config::Config& config, std::size_t target,
                         const AdmissionOptions& options);

void PrintChecks(const Admission& admission, std::ostream& out);

// "CKM_SHA256_RSA_PKCS"; hex for mechanisms without a name here (vendor ones).
std::string MechanismName(CK_MECHANISM_TYPE type);

}  // namespace p11ha::cli
