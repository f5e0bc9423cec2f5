// SPDX-License-Identifier: Apache-2.0
// PKCS#11 2.40 §5.7 (object management): create, copy, destroy, attributes, and search.
#include <algorithm>
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "fixture.h"

namespace p11ha::conformance {
namespace {

const Bytes kAesValue(32, 0x5a);

CK_OBJECT_HANDLE CreateSessionAes(const Fixture& fixture, CK_SESSION_HANDLE session) {
  Attributes extra;
  extra.Bool(CKA_SENSITIVE, true).Text(CKA_LABEL, "conformance-aes");
  return fixture.ImportAes(session, kAesValue, extra);
}

TEST_CASE_METHOD(Fixture, "C_CreateObject makes a data object and a session AES key",
                 "[conformance][object]") {
  Session session = OpenLoggedIn();
  const std::string label = UniqueLabel("data");
  const CK_OBJECT_HANDLE data = CreateData(session, label, /*token=*/true);
  CHECK(UlongAttribute(session, data, CKA_CLASS) == CKO_DATA);
  CHECK(ToString(Attribute(session, data, CKA_LABEL)) == label);
  CHECK(ToString(Attribute(session, data, CKA_VALUE)) == "some data");
  CHECK(ToString(Attribute(session, data, CKA_APPLICATION)) == "p11ha-conformance");
  CHECK(BoolAttribute(session, data, CKA_TOKEN));
  CHECK_FALSE(BoolAttribute(session, data, CKA_PRIVATE));

  const CK_OBJECT_HANDLE key = CreateSessionAes(*this, session);
  CHECK(UlongAttribute(session, key, CKA_CLASS) == CKO_SECRET_KEY);
  CHECK(UlongAttribute(session, key, CKA_KEY_TYPE) == CKK_AES);
  CHECK(UlongAttribute(session, key, CKA_VALUE_LEN) == 32);
  CHECK_FALSE(BoolAttribute(session, key, CKA_TOKEN));
  CHECK(BoolAttribute(session, key, CKA_PRIVATE));
  CHECK(BoolAttribute(session, key, CKA_SENSITIVE));
  CHECK_FALSE(BoolAttribute(session, key, CKA_LOCAL));  // imported, not generated

  REQUIRE_RV(p11->C_DestroyObject(session, data), CKR_OK);
}

TEST_CASE_METHOD(Fixture, "C_GetAttributeValue length rules", "[conformance][object]") {
  Session session = OpenLoggedIn();
  const CK_OBJECT_HANDLE data = CreateData(session, "length-rules", /*token=*/false);
  const CK_OBJECT_HANDLE key = CreateSessionAes(*this, session);

  SECTION("a NULL pValue asks for the length") {
    CK_ATTRIBUTE label{CKA_LABEL, nullptr, 0};
    REQUIRE_RV(p11->C_GetAttributeValue(session, data, &label, 1), CKR_OK);
    CHECK(label.ulValueLen == std::string("length-rules").size());
  }
  SECTION("a buffer that is too small") {
    CK_BYTE buffer[4] = {};
    CK_ATTRIBUTE label{CKA_LABEL, buffer, sizeof buffer};
    REQUIRE_RV(p11->C_GetAttributeValue(session, data, &label, 1), CKR_BUFFER_TOO_SMALL);
    CHECK(label.ulValueLen == CK_UNAVAILABLE_INFORMATION);
  }
  SECTION("a sensitive attribute") {
    CK_BYTE buffer[64] = {};
    CK_ATTRIBUTE value{CKA_VALUE, buffer, sizeof buffer};
    REQUIRE_RV(p11->C_GetAttributeValue(session, key, &value, 1), CKR_ATTRIBUTE_SENSITIVE);
    CHECK(value.ulValueLen == CK_UNAVAILABLE_INFORMATION);
    value = CK_ATTRIBUTE{CKA_VALUE, nullptr, 0};
    REQUIRE_RV(p11->C_GetAttributeValue(session, key, &value, 1), CKR_ATTRIBUTE_SENSITIVE);
    CHECK(value.ulValueLen == CK_UNAVAILABLE_INFORMATION);
  }
  SECTION("an attribute the object does not have") {
    CK_BYTE buffer[64] = {};
    CK_ATTRIBUTE modulus{CKA_MODULUS, buffer, sizeof buffer};
    REQUIRE_RV(p11->C_GetAttributeValue(session, data, &modulus, 1), CKR_ATTRIBUTE_TYPE_INVALID);
    CHECK(modulus.ulValueLen == CK_UNAVAILABLE_INFORMATION);
  }
  SECTION("one bad attribute does not stop the others") {
    CK_BYTE label_buffer[64] = {};
    CK_BYTE bogus_buffer[8] = {};
    CK_ATTRIBUTE both[] = {{CKA_VENDOR_DEFINED | 0x77, bogus_buffer, sizeof bogus_buffer},
                           {CKA_LABEL, label_buffer, sizeof label_buffer}};
    REQUIRE_RV(p11->C_GetAttributeValue(session, data, both, 2), CKR_ATTRIBUTE_TYPE_INVALID);
    CHECK(both[0].ulValueLen == CK_UNAVAILABLE_INFORMATION);
    REQUIRE(both[1].ulValueLen == std::string("length-rules").size());
    CHECK(std::string(reinterpret_cast<char*>(label_buffer), both[1].ulValueLen) ==
          "length-rules");
  }
}

TEST_CASE_METHOD(Fixture, "C_SetAttributeValue changes the label", "[conformance][object]") {
  Session session = OpenLoggedIn();
  const CK_OBJECT_HANDLE key = CreateSessionAes(*this, session);
  Attributes relabel;
  relabel.Text(CKA_LABEL, "relabelled").Data(CKA_ID, Bytes{1, 2, 3});
  REQUIRE_RV(p11->C_SetAttributeValue(session, key, relabel.get(), relabel.size()), CKR_OK);
  CHECK(ToString(Attribute(session, key, CKA_LABEL)) == "relabelled");
  CHECK(Attribute(session, key, CKA_ID) == Bytes{1, 2, 3});

  Attributes reclass;
  reclass.Ulong(CKA_CLASS, CKO_DATA);
  CHECK_RV(p11->C_SetAttributeValue(session, key, reclass.get(), reclass.size()),
           CKR_ATTRIBUTE_READ_ONLY);
  CHECK(UlongAttribute(session, key, CKA_CLASS) == CKO_SECRET_KEY);
}

TEST_CASE_METHOD(Fixture, "C_CopyObject copies with a new label", "[conformance][object]") {
  Session session = OpenLoggedIn();
  const CK_OBJECT_HANDLE original = CreateData(session, "original", /*token=*/false);
  Attributes changes;
  changes.Text(CKA_LABEL, "copy");
  CK_OBJECT_HANDLE copy = CK_INVALID_HANDLE;
  REQUIRE_RV(p11->C_CopyObject(session, original, changes.get(), changes.size(), &copy), CKR_OK);
  CHECK(copy != original);
  CHECK(ToString(Attribute(session, copy, CKA_LABEL)) == "copy");
  CHECK(ToString(Attribute(session, original, CKA_LABEL)) == "original");
  CHECK(Attribute(session, copy, CKA_VALUE) == Attribute(session, original, CKA_VALUE));
  CHECK(FindByLabel(session, "copy").size() == 1);
}

TEST_CASE_METHOD(Fixture, "C_DestroyObject invalidates the handle", "[conformance][object]") {
  Session session = OpenLoggedIn();
  const std::string label = UniqueLabel("doomed");
  const CK_OBJECT_HANDLE doomed = CreateData(session, label, /*token=*/true);
  REQUIRE_RV(p11->C_DestroyObject(session, doomed), CKR_OK);
  CK_ATTRIBUTE query{CKA_LABEL, nullptr, 0};
  CHECK_RV(p11->C_GetAttributeValue(session, doomed, &query, 1), CKR_OBJECT_HANDLE_INVALID);
  CHECK_RV(p11->C_DestroyObject(session, doomed), CKR_OBJECT_HANDLE_INVALID);
  CHECK(FindByLabel(session, label).empty());
  CHECK_RV(p11->C_DestroyObject(session, kBogusHandle), CKR_OBJECT_HANDLE_INVALID);
}

TEST_CASE_METHOD(Fixture, "C_GetObjectSize", "[conformance][object]") {
  Session session = OpenLoggedIn();
  const CK_OBJECT_HANDLE data = CreateData(session, "sized", /*token=*/false);
  // The size itself is implementation-defined (SoftHSM answers CK_UNAVAILABLE_INFORMATION).
  CK_ULONG size = 0;
  CHECK_RV(p11->C_GetObjectSize(session, data, &size), CKR_OK);
  CHECK_RV(p11->C_GetObjectSize(session, kBogusHandle, &size), CKR_OBJECT_HANDLE_INVALID);
}

TEST_CASE_METHOD(Fixture, "C_FindObjects by label, id and class in small batches",
                 "[conformance][object][find]") {
  Session session = OpenLoggedIn();
  const std::string label = UniqueLabel("batch");
  std::vector<CK_OBJECT_HANDLE> created;
  for (CK_BYTE i = 0; i < 5; ++i) {
    Attributes data;
    data.Ulong(CKA_CLASS, CKO_DATA)
        .Bool(CKA_TOKEN, false)
        .Text(CKA_LABEL, label)
        .Data(CKA_OBJECT_ID, Bytes{0x06, 0x01, i});
    created.push_back(Create(session, data));
  }
  Attributes key_extra;
  key_extra.Text(CKA_LABEL, label).Data(CKA_ID, ToBytes(label));
  const CK_OBJECT_HANDLE key = GenerateAes(session, key_extra);
  std::sort(created.begin(), created.end());

  SECTION("by label, two at a time") {
    Attributes by_label;
    by_label.Text(CKA_LABEL, label);
    REQUIRE_RV(p11->C_FindObjectsInit(session, by_label.get(), by_label.size()), CKR_OK);
    std::vector<CK_OBJECT_HANDLE> found;
    std::vector<CK_ULONG> batches;
    for (;;) {
      CK_OBJECT_HANDLE chunk[2] = {};
      CK_ULONG count = 99;
      REQUIRE_RV(p11->C_FindObjects(session, chunk, 2, &count), CKR_OK);
      batches.push_back(count);
      found.insert(found.end(), chunk, chunk + count);
      if (count == 0) break;
    }
    REQUIRE_RV(p11->C_FindObjectsFinal(session), CKR_OK);
    CHECK(batches == std::vector<CK_ULONG>{2, 2, 2, 0});
    CHECK(found.size() == 6);
    CHECK(std::find(found.begin(), found.end(), key) != found.end());
  }
  SECTION("by label and class, one at a time") {
    Attributes query;
    query.Text(CKA_LABEL, label).Ulong(CKA_CLASS, CKO_DATA);
    std::vector<CK_OBJECT_HANDLE> found = Find(session, query, /*batch=*/1);
    std::sort(found.begin(), found.end());
    CHECK(found == created);
  }
  SECTION("by id") {
    Attributes by_id;
    by_id.Data(CKA_ID, ToBytes(label));
    CHECK(Find(session, by_id) == std::vector<CK_OBJECT_HANDLE>{key});
  }
  SECTION("by class") {
    Attributes by_class;
    by_class.Ulong(CKA_CLASS, CKO_SECRET_KEY);
    const std::vector<CK_OBJECT_HANDLE> found = Find(session, by_class, /*batch=*/3);
    CHECK(std::find(found.begin(), found.end(), key) != found.end());
    for (CK_OBJECT_HANDLE object : found) {
      CHECK(UlongAttribute(session, object, CKA_CLASS) == CKO_SECRET_KEY);
    }
  }
  SECTION("an empty template finds everything visible") {
    Attributes everything;
    const std::vector<CK_OBJECT_HANDLE> found = Find(session, everything);
    for (CK_OBJECT_HANDLE object : created) {
      CHECK(std::find(found.begin(), found.end(), object) != found.end());
    }
  }
  SECTION("a template nothing matches") {
    Attributes nothing;
    nothing.Text(CKA_LABEL, UniqueLabel("no-such-object"));
    REQUIRE_RV(p11->C_FindObjectsInit(session, nothing.get(), nothing.size()), CKR_OK);
    CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
    CK_ULONG count = 99;
    REQUIRE_RV(p11->C_FindObjects(session, &handle, 1, &count), CKR_OK);
    CHECK(count == 0);
    REQUIRE_RV(p11->C_FindObjectsFinal(session), CKR_OK);
  }
}

TEST_CASE_METHOD(Fixture, "Find operation state rules", "[conformance][object][find]") {
  Session session = Open();
  CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
  CK_ULONG count = 0;
  CHECK_RV(p11->C_FindObjects(session, &handle, 1, &count), CKR_OPERATION_NOT_INITIALIZED);
  CHECK_RV(p11->C_FindObjectsFinal(session), CKR_OPERATION_NOT_INITIALIZED);

  REQUIRE_RV(p11->C_FindObjectsInit(session, nullptr, 0), CKR_OK);
  CHECK_RV(p11->C_FindObjectsInit(session, nullptr, 0), CKR_OPERATION_ACTIVE);
  CHECK_RV(p11->C_FindObjects(session, &handle, 1, &count), CKR_OK);  // still the first search
  REQUIRE_RV(p11->C_FindObjectsFinal(session), CKR_OK);
  CHECK_RV(p11->C_FindObjectsFinal(session), CKR_OPERATION_NOT_INITIALIZED);
  REQUIRE_RV(p11->C_FindObjectsInit(session, nullptr, 0), CKR_OK);
  REQUIRE_RV(p11->C_FindObjectsFinal(session), CKR_OK);
}

TEST_CASE_METHOD(Fixture, "Private objects are invisible until login",
                 "[conformance][object][login]") {
  Session session = OpenLoggedIn();
  const std::string label = UniqueLabel("secret-data");
  CreateData(session, label, /*token=*/true, /*is_private=*/true);
  const std::string public_label = UniqueLabel("public-data");
  CreateData(session, public_label, /*token=*/true);
  REQUIRE(FindByLabel(session, label).size() == 1);

  REQUIRE_RV(p11->C_Logout(session), CKR_OK);
  CHECK(FindByLabel(session, label).empty());
  CHECK(FindByLabel(session, public_label).size() == 1);
  Attributes private_data;
  private_data.Ulong(CKA_CLASS, CKO_DATA)
      .Bool(CKA_TOKEN, false)
      .Bool(CKA_PRIVATE, true)
      .Text(CKA_LABEL, "not yet");
  CK_OBJECT_HANDLE refused = CK_INVALID_HANDLE;
  CHECK_RV(p11->C_CreateObject(session, private_data.get(), private_data.size(), &refused),
           CKR_USER_NOT_LOGGED_IN);

  session.Login();
  const std::vector<CK_OBJECT_HANDLE> found = FindByLabel(session, label);
  REQUIRE(found.size() == 1);
  REQUIRE_RV(p11->C_DestroyObject(session, found[0]), CKR_OK);
  REQUIRE_RV(p11->C_DestroyObject(session, FindByLabel(session, public_label).at(0)), CKR_OK);
}

TEST_CASE_METHOD(Fixture, "A session object disappears when its session closes",
                 "[conformance][object]") {
  Session owner = OpenLoggedIn();
  Session other = Open();
  const std::string label = UniqueLabel("ephemeral");
  const CK_OBJECT_HANDLE object = CreateData(owner, label, /*token=*/false);
  // Session objects are shared by the application's sessions on the token.
  CHECK(FindByLabel(other, label) == std::vector<CK_OBJECT_HANDLE>{object});
  CHECK(ToString(Attribute(other, object, CKA_LABEL)) == label);

  REQUIRE_RV(owner.Close(), CKR_OK);
  CK_ATTRIBUTE query{CKA_LABEL, nullptr, 0};
  CHECK_RV(p11->C_GetAttributeValue(other, object, &query, 1), CKR_OBJECT_HANDLE_INVALID);
  CHECK(FindByLabel(other, label).empty());
}

TEST_CASE_METHOD(Fixture, "A read-only session cannot create token objects",
                 "[conformance][object]") {
  Session ro = OpenLoggedIn(kRoFlags);
  Attributes data;
  data.Ulong(CKA_CLASS, CKO_DATA).Bool(CKA_TOKEN, true).Text(CKA_LABEL, UniqueLabel("ro"));
  CK_OBJECT_HANDLE object = CK_INVALID_HANDLE;
  CHECK_RV(p11->C_CreateObject(ro, data.get(), data.size(), &object), CKR_SESSION_READ_ONLY);

  // Session objects are fine in a read-only session.
  const CK_OBJECT_HANDLE session_object = CreateData(ro, "ro-session-object", /*token=*/false);
  CHECK_RV(p11->C_DestroyObject(ro, session_object), CKR_OK);
}

TEST_CASE_METHOD(Fixture, "Private object handles across logout and login",
                 "[conformance][object][login]") {
  Session session = OpenLoggedIn();
  const std::string label = UniqueLabel("private-handle");
  const CK_OBJECT_HANDLE before = CreateData(session, label, /*token=*/true, /*is_private=*/true);
  REQUIRE_RV(p11->C_Logout(session), CKR_OK);

  CK_BYTE buffer[128] = {};
  CK_ATTRIBUTE query{CKA_LABEL, buffer, sizeof buffer};
  CHECK_RV(p11->C_GetAttributeValue(session, before, &query, 1), CKR_OBJECT_HANDLE_INVALID);

  session.Login();
  // Whether the old handle works again is implementation-defined: SoftHSM 2.6.1 answers
  // CKR_OBJECT_HANDLE_INVALID and hands out a new one; p11ha may keep it. What must never
  // happen is an old handle naming a different object.
  query = CK_ATTRIBUTE{CKA_LABEL, buffer, sizeof buffer};
  const CK_RV rv = p11->C_GetAttributeValue(session, before, &query, 1);
  INFO("old handle after re-login: " << RvName(rv));
  CHECK((rv == CKR_OBJECT_HANDLE_INVALID || rv == CKR_OK));
  if (rv == CKR_OK) {
    CHECK(std::string(reinterpret_cast<char*>(buffer), query.ulValueLen) == label);
  }
  const std::vector<CK_OBJECT_HANDLE> found = FindByLabel(session, label);
  REQUIRE(found.size() == 1);
  CHECK(ToString(Attribute(session, found[0], CKA_LABEL)) == label);
  REQUIRE_RV(p11->C_DestroyObject(session, found[0]), CKR_OK);
}

}  // namespace
}  // namespace p11ha::conformance
