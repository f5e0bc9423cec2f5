// SPDX-License-Identifier: Apache-2.0
// Session and object handles are p11ha's own (DESIGN.md "Handles"): never reused in a
// process, stable across searches, and dead when the login that made them visible ends.
#include <catch2/catch.hpp>
#include <set>

#include "support.h"

namespace p11ha::module_test {
namespace {

void UseFarmConfig(const TempDir& dir) {
  MakeFarm(dir.path(), 2);
  ConfigSpec spec;
  spec.members = FarmMembers(2);
  spec.log_file = dir / "p11ha.log";
  UseConfig(dir / "p11ha.toml", spec);
}

std::vector<CK_OBJECT_HANDLE> FindByLabel(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE session,
                                          const std::string& label) {
  std::string copy = label;
  return Find(f, session, {{CKA_LABEL, copy.data(), copy.size()}});
}

TEST_CASE("session and object handles are never reused in one run", "[integration]") {
  TempDir dir;
  UseFarmConfig(dir);
  CK_FUNCTION_LIST* f = P11ha();
  Initialized initialized;
  const CK_SESSION_HANDLE keeper = OpenSession(f);
  REQUIRE(Login(f, keeper, kUserPin) == CKR_OK);

  std::set<CK_SESSION_HANDLE> sessions = {keeper};
  for (int n = 0; n < 50; ++n) {
    const CK_SESSION_HANDLE session = OpenSession(f);
    INFO("session " << n << " got handle " << session);
    CHECK(sessions.insert(session).second);
    REQUIRE(f->C_CloseSession(session) == CKR_OK);
  }

  std::set<CK_OBJECT_HANDLE> objects;
  for (int n = 0; n < 50; ++n) {
    const CK_OBJECT_HANDLE object =
        CreateData(f, keeper, /*on_token=*/false, /*is_private=*/n % 2 == 0,
                   "churn-" + std::to_string(n));
    INFO("object " << n << " got handle " << object);
    CHECK(objects.insert(object).second);
    REQUIRE(f->C_DestroyObject(keeper, object) == CKR_OK);
  }
  CHECK(initialized.Finalize() == CKR_OK);
}

TEST_CASE("an object handle stays valid across C_FindObjects calls", "[integration]") {
  TempDir dir;
  UseFarmConfig(dir);
  CK_FUNCTION_LIST* f = P11ha();
  Initialized initialized;
  const CK_SESSION_HANDLE session = OpenSession(f);
  REQUIRE(Login(f, session, kUserPin) == CKR_OK);
  std::set<CK_OBJECT_HANDLE> created;
  for (int n = 0; n < 3; ++n) {
    created.insert(CreateData(f, session, /*on_token=*/n == 0, /*is_private=*/n == 1, "stable"));
  }
  REQUIRE(created.size() == 3);

  std::string label = "stable";
  CK_ATTRIBUTE query[] = {{CKA_LABEL, label.data(), label.size()}};
  REQUIRE(f->C_FindObjectsInit(session, query, 1) == CKR_OK);
  std::vector<CK_OBJECT_HANDLE> seen;
  for (;;) {
    CK_OBJECT_HANDLE one = CK_INVALID_HANDLE;
    CK_ULONG count = 0;
    REQUIRE(f->C_FindObjects(session, &one, 1, &count) == CKR_OK);
    if (count == 0) break;
    seen.push_back(one);
    // Every handle handed out so far still reads, while the search goes on.
    for (CK_OBJECT_HANDLE earlier : seen) {
      std::string read;
      INFO("handle " << earlier << " after " << seen.size() << " C_FindObjects calls");
      CHECK(ReadLabel(f, session, earlier, &read) == CKR_OK);
      CHECK(read == "stable");
    }
  }
  REQUIRE(f->C_FindObjectsFinal(session) == CKR_OK);
  CHECK(std::set<CK_OBJECT_HANDLE>(seen.begin(), seen.end()) == created);

  // A second search names the same objects by the same handles.
  const std::vector<CK_OBJECT_HANDLE> again = FindByLabel(f, session, "stable");
  CHECK(std::set<CK_OBJECT_HANDLE>(again.begin(), again.end()) == created);
  CHECK(initialized.Finalize() == CKR_OK);
}

TEST_CASE("after C_Logout a private object's handle is invalid and a public one's is not",
          "[integration]") {
  TempDir dir;
  UseFarmConfig(dir);
  CK_FUNCTION_LIST* f = P11ha();
  Initialized initialized;
  const CK_SESSION_HANDLE session = OpenSession(f);
  REQUIRE(Login(f, session, kUserPin) == CKR_OK);
  const CK_OBJECT_HANDLE private_object =
      CreateData(f, session, /*on_token=*/true, /*is_private=*/true, "private-data");
  const CK_OBJECT_HANDLE public_object =
      CreateData(f, session, /*on_token=*/true, /*is_private=*/false, "public-data");
  std::string label;
  REQUIRE(ReadLabel(f, session, private_object, &label) == CKR_OK);

  REQUIRE(f->C_Logout(session) == CKR_OK);
  CHECK(ReadLabel(f, session, private_object, &label) == CKR_OBJECT_HANDLE_INVALID);
  CHECK(ReadLabel(f, session, public_object, &label) == CKR_OK);
  CHECK(label == "public-data");

  // PKCS#11 §5.6 C_Logout: the handle stays invalid even after the user logs in again; the
  // object itself is found again under a new handle.
  REQUIRE(Login(f, session, kUserPin) == CKR_OK);
  CHECK(ReadLabel(f, session, private_object, &label) == CKR_OBJECT_HANDLE_INVALID);
  const std::vector<CK_OBJECT_HANDLE> found = FindByLabel(f, session, "private-data");
  REQUIRE(found.size() == 1);
  CHECK(found[0] != private_object);
  CHECK(ReadLabel(f, session, found[0], &label) == CKR_OK);
  CHECK(label == "private-data");
  CHECK(ReadLabel(f, session, public_object, &label) == CKR_OK);
  CHECK(initialized.Finalize() == CKR_OK);
}

// DESIGN.md: "Session and object handles are p11ha's own, never reused within a process".
// An application (or a second library in the process) that still holds a handle from before a
// C_Finalize must get an error, never a different session or object.
TEST_CASE("handles are not reused after C_Finalize and C_Initialize", "[integration]") {
  TempDir dir;
  UseFarmConfig(dir);
  CK_FUNCTION_LIST* f = P11ha();

  REQUIRE(Initialize() == CKR_OK);
  const CK_SESSION_HANDLE old_session = OpenSession(f);
  const CK_OBJECT_HANDLE old_object =
      CreateData(f, old_session, /*on_token=*/false, /*is_private=*/false, "first run");
  REQUIRE(f->C_Finalize(nullptr) == CKR_OK);

  Initialized initialized;
  const CK_SESSION_HANDLE new_session = OpenSession(f);
  const CK_OBJECT_HANDLE new_object =
      CreateData(f, new_session, /*on_token=*/false, /*is_private=*/false, "second run");
  INFO("first run: session " << old_session << ", object " << old_object
                             << "; second run: session " << new_session << ", object "
                             << new_object);
  CHECK(new_session != old_session);
  CHECK(new_object != old_object);
  CK_SESSION_INFO info{};
  CHECK(f->C_GetSessionInfo(old_session, &info) == CKR_SESSION_HANDLE_INVALID);
  std::string label;
  const CK_RV rv = ReadLabel(f, new_session, old_object, &label);
  INFO("the first run's object handle now reads label '" << label << "'");
  CHECK(rv == CKR_OBJECT_HANDLE_INVALID);
  CHECK(initialized.Finalize() == CKR_OK);
}

}  // namespace
}  // namespace p11ha::module_test
