// SPDX-License-Identifier: Apache-2.0
// Start-up: configuration errors fail C_Initialize with a message an operator can act on and
// leave nothing behind; a member whose token is missing is only down.
#include <catch2/catch.hpp>

#include "support.h"

namespace p11ha::module_test {
namespace {

struct BadConfig {
  std::string what;
  std::string path;   // what P11HA_CONFIG names
  std::string text;   // written to `path` unless empty
  std::string log;    // the log file the bad config names, if any
  std::vector<std::string> expected;  // all on one line of stderr or of `log`
};

// Replaces line `number` (1-based) of `text`, or inserts before it when `insert` is set.
std::string EditLine(const std::string& text, int number, const std::string& line, bool insert) {
  std::size_t begin = 0;
  for (int i = 1; i < number; ++i) begin = text.find('\n', begin) + 1;
  const std::size_t end = insert ? begin : text.find('\n', begin) + 1;
  return text.substr(0, begin) + line + "\n" + text.substr(end);
}

TEST_CASE("bad configs fail C_Initialize with file line and key and leave nothing behind",
          "[integration]") {
  TempDir dir;
  MakeFarm(dir.path(), 1);
  ConfigSpec good;
  good.members = FarmMembers(1);
  good.log_file = dir / "p11ha.log";
  const std::string good_text = RenderConfig(good);
  // RenderConfig writes "[cluster]", "label = ...", "slot_id = 0" on lines 1-3.
  REQUIRE(good_text.rfind("[cluster]\nlabel = \"ha-test\"\nslot_id = 0\n", 0) == 0);

  ConfigSpec missing_module = good;
  missing_module.members.push_back({"hsm-gone", dir / "no-such-dir/libmissing-member.so",
                                    "pkcs11:token=m1"});
  missing_module.log_file = dir / "bad-module.log";

  const std::vector<BadConfig> cases = {
      {"missing file", dir / "absent.toml", "", "", {dir / "absent.toml"}},
      {"unknown key", dir / "unknown-key.toml",
       EditLine(good_text, 3, "colour = \"red\"", /*insert=*/true), "",
       {dir / "unknown-key.toml:3", "cluster.colour"}},
      {"wrong type", dir / "wrong-type.toml",
       EditLine(good_text, 3, "slot_id = \"zero\"", /*insert=*/false), "",
       {dir / "wrong-type.toml:3", "cluster.slot_id"}},
      {"missing member module", dir / "bad-module.toml", RenderConfig(missing_module),
       missing_module.log_file,
       {"hsm-gone", dir / "no-such-dir/libmissing-member.so"}},
  };

  CK_FUNCTION_LIST* f = P11ha();
  const int threads = ThreadCount();
  for (const BadConfig& bad : cases) {
    INFO("case: " << bad.what << " (" << bad.path << ")");
    if (!bad.text.empty()) WriteFile(bad.path, bad.text);
    setenv("P11HA_CONFIG", bad.path.c_str(), 1);

    // Before p11ha has read a config, its only log is stderr.
    StderrCapture capture(dir / "stderr.txt");
    const CK_RV rv = Initialize();
    const std::string err = capture.Stop();
    const std::string log = bad.log.empty() ? "" : ReadFile(bad.log);
    INFO("C_Initialize -> " << RvText(rv) << "\nstderr:\n" << err << "\nlog file:\n" << log);
    CHECK(rv == CKR_FUNCTION_FAILED);
    CHECK((!LineWithAll(err, bad.expected).empty() || !LineWithAll(log, bad.expected).empty()));

    // A failed C_Initialize leaves no module, no thread and no loaded member state.
    CK_ULONG count = 0;
    CHECK(f->C_GetSlotList(CK_TRUE, nullptr, &count) == CKR_CRYPTOKI_NOT_INITIALIZED);
    CHECK(ThreadCountSettlesTo(threads));

    UseConfig(dir / "p11ha.toml", good);
    const CK_RV good_rv = Initialize();
    INFO("C_Initialize with the corrected config -> " << RvText(good_rv));
    REQUIRE(good_rv == CKR_OK);
    CHECK(f->C_GetSlotList(CK_TRUE, nullptr, &count) == CKR_OK);
    CHECK(count == 1);
    const CK_SESSION_HANDLE session = OpenSession(f);
    CHECK(Login(f, session, kUserPin) == CKR_OK);
    REQUIRE(f->C_Finalize(nullptr) == CKR_OK);
  }
}

TEST_CASE("a member whose URI matches no token is down and the slot still works",
          "[integration]") {
  TempDir dir;
  MakeFarm(dir.path(), 1);
  ConfigSpec spec;
  spec.slot_id = 5;
  spec.members = FarmMembers(1);
  spec.members.push_back({"hsm-nope", P11HA_SOFTHSM_MODULE, "pkcs11:token=nope"});
  spec.log_level = "warn";
  spec.log_file = dir / "p11ha.log";
  UseConfig(dir / "p11ha.toml", spec);

  CK_FUNCTION_LIST* f = P11ha();
  Initialized initialized;
  CK_SLOT_ID slots[4] = {};
  CK_ULONG count = std::size(slots);
  REQUIRE(f->C_GetSlotList(CK_TRUE, slots, &count) == CKR_OK);
  REQUIRE(count == 1);
  CHECK(slots[0] == 5);

  const CK_SESSION_HANDLE session = OpenSession(f, slots[0]);
  REQUIRE(Login(f, session, kUserPin) == CKR_OK);
  const KeyPair pair = GenerateP256(f, session, /*on_token=*/false, "no-token-case");
  const Digest digest = Sha256("signed with one member down");
  CK_RV rv = CKR_OK;
  const Bytes signature = SignDigest(f, session, pair.private_key, digest, &rv);
  INFO("sign -> " << RvText(rv));
  REQUIRE(rv == CKR_OK);
  CHECK(VerifyP256(EcPoint(f, session, pair.public_key), digest, signature));
  CHECK(initialized.Finalize() == CKR_OK);

  const std::string log = ReadFile(spec.log_file);
  INFO("log file:\n" << log);
  CHECK(!LineWithAll(log, {"hsm-nope", "down", "no token matches"}).empty());
}

}  // namespace
}  // namespace p11ha::module_test
