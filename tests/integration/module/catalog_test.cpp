// SPDX-License-Identifier: Apache-2.0
// Finds answered from p11ha's own catalog (README "Finding objects"): without a member search
// while a listing is fresh, and still seeing what another process does to the member tokens:
// at once for a name that matches nothing or an object that was renamed or destroyed, and
// within catalog.max_age_ms for everything else.
#include <catch2/catch.hpp>
#include <set>
#include <thread>

#include "support.h"

namespace p11ha::module_test {
namespace {

// Short enough for a test to wait out, long enough for the finds between waits.
constexpr unsigned kMaxAgeMs = 700;
// Longer than any test here: nothing expires on its own.
constexpr unsigned kNeverMs = 600000;

// Two staged test members behind p11ha with the given catalog.max_age_ms, and a session
// logged in through p11ha.
struct Cluster {
  explicit Cluster(const TempDir& dir, unsigned max_age_ms) : f(Stage(dir, max_age_ms)), session(OpenSession(f)) {
    REQUIRE(Login(f, session, kUserPin) == CKR_OK);
  }
  static CK_FUNCTION_LIST* Stage(const TempDir& dir, unsigned max_age_ms) {
    StageMembers(dir.path(), 2);
    ConfigSpec spec;
    spec.members = TestMembers(dir.path(), 2);
    spec.log_file = dir / "p11ha.log";
    spec.catalog_max_age_ms = max_age_ms;
    UseConfig(dir / "p11ha.toml", spec);
    return P11ha();
  }

  CK_FUNCTION_LIST* f;
  Initialized initialized;
  CK_SESSION_HANDLE session;
};

int MemberSearches(const TempDir& dir) {
  return MemberCount(MemberSo(dir.path(), 1), "C_FindObjectsInit") +
         MemberCount(MemberSo(dir.path(), 2), "C_FindObjectsInit");
}

std::vector<CK_OBJECT_HANDLE> ByLabel(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE session, const std::string& label) {
  std::string copy = label;
  return Find(f, session, {{CKA_LABEL, copy.data(), copy.size()}});
}

std::set<std::string> DataLabels(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE session) {
  CK_OBJECT_CLASS data_class = CKO_DATA;
  CK_BBOOL yes = CK_TRUE;
  std::set<std::string> labels;
  for (CK_OBJECT_HANDLE object : Find(f, session, {{CKA_CLASS, &data_class, sizeof data_class}, {CKA_TOKEN, &yes, sizeof yes}})) {
    std::string label;
    REQUIRE(ReadLabel(f, session, object, &label) == CKR_OK);
    labels.insert(label);
  }
  return labels;
}

// Another process (pkcs11-tool on plain SoftHSM) changes member token m<i> behind p11ha's back.
void OtherProcess(const TempDir& dir, int i, const std::vector<std::string>& action) {
  std::vector<std::string> argv = {"pkcs11-tool", "--module", P11HA_SOFTHSM_MODULE, "--token-label",
                                   "m" + std::to_string(i), "--login", "--pin", kUserPin};
  argv.insert(argv.end(), action.begin(), action.end());
  CommandResult result = Run(argv, {"SOFTHSM2_CONF=" + MemberConf(dir.path(), i)});
  INFO(result.output);
  REQUIRE(result.exit_code == 0);
}

void ExternalWrite(const TempDir& dir, int i, const std::string& label) {
  WriteFile(dir / "value.bin", "written by another process: " + label);
  OtherProcess(dir, i, {"--write-object", dir / "value.bin", "--type", "data", "--label", label});
}

void ExternalDelete(const TempDir& dir, int i, const std::string& label) {
  OtherProcess(dir, i, {"--delete-object", "--type", "data", "--label", label});
}

TEST_CASE("finds by name are answered from the catalog without searching a member", "[integration]") {
  TempDir dir;
  Cluster cluster(dir, kNeverMs);
  auto [f, session] = std::pair(cluster.f, cluster.session);
  const CK_OBJECT_HANDLE a = CreateData(f, session, true, false, "cat-a");
  const CK_OBJECT_HANDLE b = CreateData(f, session, true, true, "cat-b");
  const CK_OBJECT_HANDLE temporary = CreateData(f, session, false, false, "cat-session");

  CHECK(ByLabel(f, session, "cat-a") == std::vector<CK_OBJECT_HANDLE>{a});  // lists both members
  const int searches = MemberSearches(dir);
  CHECK(ByLabel(f, session, "cat-b") == std::vector<CK_OBJECT_HANDLE>{b});
  CHECK(ByLabel(f, session, "cat-session") == std::vector<CK_OBJECT_HANDLE>{temporary});
  CHECK(ByLabel(f, session, "cat-a") == std::vector<CK_OBJECT_HANDLE>{a});
  CHECK(MemberSearches(dir) == searches);

  // Renamed through p11ha: the catalog knows at once.
  std::string renamed = "cat-b-renamed";
  CK_ATTRIBUTE rename[] = {{CKA_LABEL, renamed.data(), renamed.size()}};
  REQUIRE(f->C_SetAttributeValue(session, b, rename, 1) == CKR_OK);
  CHECK(ByLabel(f, session, "cat-b-renamed") == std::vector<CK_OBJECT_HANDLE>{b});
  CHECK(MemberSearches(dir) == searches);

  // Private objects are not found without a login, and are again after one.
  REQUIRE(f->C_Logout(session) == CKR_OK);
  CHECK(ByLabel(f, session, "cat-b-renamed").empty());
  CHECK(ByLabel(f, session, "cat-a").size() == 1);
  REQUIRE(Login(f, session, kUserPin) == CKR_OK);
  CHECK(ByLabel(f, session, "cat-b-renamed").size() == 1);
  CHECK(cluster.initialized.Finalize() == CKR_OK);
}

TEST_CASE("the catalog sees another process's objects: new names at once, everything within max_age", "[integration]") {
  TempDir dir;
  Cluster cluster(dir, kMaxAgeMs);
  auto [f, session] = std::pair(cluster.f, cluster.session);
  CreateData(f, session, true, false, "cat-mine");
  CreateData(f, session, true, false, "cat-doomed");
  CHECK(DataLabels(f, session) == std::set<std::string>{"cat-mine", "cat-doomed"});

  // A name the catalog does not know goes to the members, which have it.
  ExternalWrite(dir, 1, "cat-theirs");
  CHECK(ByLabel(f, session, "cat-theirs").size() == 1);

  // An object destroyed by another process is not handed out by name, even while the listing
  // is fresh: the catalog's answer is checked on the member first.
  ExternalDelete(dir, 1, "cat-doomed");
  ExternalDelete(dir, 2, "cat-doomed");
  CHECK(ByLabel(f, session, "cat-doomed").empty());

  // Within max_age, a search by class alone sees the other process's new object too.
  ExternalWrite(dir, 2, "cat-later");
  std::this_thread::sleep_for(std::chrono::milliseconds(kMaxAgeMs + 100));
  CHECK(DataLabels(f, session) == std::set<std::string>{"cat-mine", "cat-theirs", "cat-later"});
  ExternalDelete(dir, 1, "cat-theirs");
  std::this_thread::sleep_for(std::chrono::milliseconds(kMaxAgeMs + 100));
  CHECK(DataLabels(f, session) == std::set<std::string>{"cat-mine", "cat-later"});
  CHECK(cluster.initialized.Finalize() == CKR_OK);
}

TEST_CASE("with catalog.max_age_ms = 0 every find searches the members", "[integration]") {
  TempDir dir;
  Cluster cluster(dir, 0);
  auto [f, session] = std::pair(cluster.f, cluster.session);
  CreateData(f, session, true, false, "cat-plain");
  for (int n = 0; n < 3; ++n) {
    const int before = MemberSearches(dir);
    CHECK(ByLabel(f, session, "cat-plain").size() == 1);
    CHECK(MemberSearches(dir) == before + 2);  // one search on each member
  }
  CHECK(cluster.initialized.Finalize() == CKR_OK);
}

}  // namespace
}  // namespace p11ha::module_test
