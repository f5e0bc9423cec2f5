// SPDX-License-Identifier: Apache-2.0
// Replication across a member's outage inside one process: the returning member is reconciled
// before it serves, and a later destroy finds the copy reconciliation made (which this
// process's catalog never saw). Member tokens are checked directly with pkcs11-tool.
#include <catch2/catch.hpp>

#include "support.h"

namespace p11ha::module_test {
namespace {

// The labels of member token m<i>'s objects, listed directly with plain SoftHSM.
std::string DirectListing(const TempDir& dir, int i) {
  CommandResult listed = Run({"pkcs11-tool", "--module", P11HA_SOFTHSM_MODULE, "--token-label",
                              "m" + std::to_string(i), "--login", "--pin", kUserPin, "--list-objects"},
                             {"SOFTHSM2_CONF=" + MemberConf(dir.path(), i)});
  REQUIRE(listed.exit_code == 0);
  return listed.output;
}

TEST_CASE("a key made while a member was down reaches it at rejoin, and a destroy then removes that copy",
          "[integration]") {
  TempDir dir;
  StageMembers(dir.path(), 2);
  const std::string member2 = MemberSo(dir.path(), 2);
  SetMemberFault(member2, "fail * CKR_DEVICE_ERROR");
  ConfigSpec spec;
  spec.members = TestMembers(dir.path(), 2);
  spec.policy = "priority";
  spec.probe_interval_ms = 200;
  spec.quorum = "1";  // the key may be born while member 2 is down
  spec.log_file = dir / "p11ha.log";
  UseConfig(dir / "p11ha.toml", spec);

  CK_FUNCTION_LIST* f = P11ha();
  Initialized initialized;
  const CK_SESSION_HANDLE session = OpenSession(f);
  REQUIRE(Login(f, session, kUserPin) == CKR_OK);
  const KeyPair pair = GenerateP256(f, session, /*on_token=*/true, "made-while-down");
  CHECK(DirectListing(dir, 1).find("made-while-down") != std::string::npos);
  CHECK(DirectListing(dir, 2).find("made-while-down") == std::string::npos);

  SetMemberFault(member2, "clear");
  const bool logged_in = WaitFor([&] { return MemberCount(member2, "C_Login") >= 1; }, std::chrono::seconds(5));
  REQUIRE(logged_in);
  // Reconciliation runs before the member serves: once it unwrapped, the copy is there.
  const bool copied = WaitFor([&] { return DirectListing(dir, 2).find("made-while-down") != std::string::npos; },
                              std::chrono::seconds(5));
  INFO("log:\n" << ReadFile(dir / "p11ha.log"));
  REQUIRE(copied);
  // The member counts a call when it returns; the copy's file can be seen a moment earlier.
  CHECK(WaitFor([&] { return MemberCount(member2, "C_UnwrapKey") >= 1; }, std::chrono::seconds(5)));

  // The member serves once reconciliation is over; a destroy before that would leave a
  // tombstone for it instead (the case the replication tests cover), not destroy its copy.
  const bool serving = WaitFor(
      [&] { return !LineWithAll(ReadFile(dir / "p11ha.log"), {"member hsm-2 up"}).empty(); }, std::chrono::seconds(5));
  REQUIRE(serving);
  REQUIRE(f->C_DestroyObject(session, pair.private_key) == CKR_OK);
  REQUIRE(f->C_DestroyObject(session, pair.public_key) == CKR_OK);
  CHECK(DirectListing(dir, 1).find("made-while-down") == std::string::npos);
  CHECK(DirectListing(dir, 2).find("made-while-down") == std::string::npos);
  CHECK(initialized.Finalize() == CKR_OK);
}

}  // namespace
}  // namespace p11ha::module_test
