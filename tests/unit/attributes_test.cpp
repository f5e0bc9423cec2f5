// SPDX-License-Identifier: Apache-2.0
#include "replication/attributes.h"

#include <catch2/catch.hpp>
#include <string>

#include "fake_token.h"

namespace p11ha {
namespace {

// Counts the member calls a read costs: a listing of thousands of objects is made of them.
class CountingToken : public testing::FakeToken {
 public:
  CountingToken() : FakeToken("counting") {}
  CK_RV GetAttributeValue(CK_OBJECT_HANDLE object, std::span<CK_ATTRIBUTE> attributes) override {
    ++reads;
    return FakeToken::GetAttributeValue(object, attributes);
  }
  int reads = 0;
};

std::string Text(const replication::Attribute* attribute) {
  REQUIRE(attribute != nullptr);
  return std::string(attribute->value.begin(), attribute->value.end());
}

TEST_CASE("attribute reads: short values in one call; long, absent and sensitive ones told apart") {
  CountingToken token;
  const std::string long_value(1000, 'v');
  const CK_OBJECT_HANDLE data = token.Put(testing::DataObject("short label", long_value));
  const CK_OBJECT_HANDLE key = token.Put(testing::SecretKey("k", "02", "0123456789abcdef0123456789abcdef"));

  replication::AttributeList read;
  static constexpr CK_ATTRIBUTE_TYPE kShort[] = {CKA_CLASS, CKA_LABEL};
  REQUIRE(replication::ReadAttributes(token, data, kShort, read) == CKR_OK);
  CHECK(token.reads == 1);
  CHECK(Text(replication::FindAttribute(read, CKA_LABEL)) == "short label");

  token.reads = 0;
  static constexpr CK_ATTRIBUTE_TYPE kMixed[] = {CKA_CLASS, CKA_ID, CKA_VALUE, CKA_LABEL};
  REQUIRE(replication::ReadAttributes(token, data, kMixed, read) == CKR_OK);
  CHECK(token.reads == 3);  // the guess, a size query of the unavailable two, the long value
  REQUIRE(read.size() == 3);
  CHECK(read[0].type == CKA_CLASS);  // in the order asked
  CHECK(read[1].type == CKA_VALUE);
  CHECK(Text(&read[1]) == long_value);
  CHECK(Text(&read[2]) == "short label");
  CHECK(replication::FindAttribute(read, CKA_ID) == nullptr);

  static constexpr CK_ATTRIBUTE_TYPE kSecret[] = {CKA_VALUE, CKA_LABEL, CKA_ID};
  REQUIRE(replication::ReadAttributes(token, key, kSecret, read) == CKR_OK);
  CHECK(replication::FindAttribute(read, CKA_VALUE) == nullptr);  // sensitive: left out
  CHECK(Text(replication::FindAttribute(read, CKA_ID)) == "02");

  CHECK(replication::ReadAttributes(token, 999, kShort, read) == CKR_OBJECT_HANDLE_INVALID);
}

TEST_CASE("attribute reads: an absent flag needs no size query, an absent string still does") {
  CountingToken token;
  const CK_OBJECT_HANDLE data = token.Put(testing::DataObject("label", "value"));
  replication::AttributeList read;
  // A data object has no CKA_SENSITIVE or CKA_START_DATE: scalars that cannot be too long.
  static constexpr CK_ATTRIBUTE_TYPE kFlags[] = {CKA_CLASS, CKA_SENSITIVE, CKA_LABEL, CKA_START_DATE};
  REQUIRE(replication::ReadAttributes(token, data, kFlags, read) == CKR_OK);
  CHECK(token.reads == 1);
  REQUIRE(read.size() == 2);
  CHECK(Text(replication::FindAttribute(read, CKA_LABEL)) == "label");
  CHECK(replication::FindAttribute(read, CKA_SENSITIVE) == nullptr);

  token.reads = 0;
  static constexpr CK_ATTRIBUTE_TYPE kStrings[] = {CKA_CLASS, CKA_ID, CKA_LABEL};
  REQUIRE(replication::ReadAttributes(token, data, kStrings, read) == CKR_OK);
  CHECK(token.reads == 2);  // CKA_ID might have been too long: asked again
  CHECK(replication::FindAttribute(read, CKA_ID) == nullptr);

  // Wanted only when short: not asked again, whether absent or too long.
  testing::Attributes long_application = testing::DataObject("long", "value");
  long_application[CKA_APPLICATION] = testing::Bytes(std::string(300, 'x'));
  const CK_OBJECT_HANDLE long_one = token.Put(long_application);
  static constexpr CK_ATTRIBUTE_TYPE kShortOnly[] = {CKA_ID, CKA_APPLICATION};
  for (CK_OBJECT_HANDLE object : {data, long_one}) {
    token.reads = 0;
    REQUIRE(replication::ReadAttributes(token, object, kStrings, read, kShortOnly) == CKR_OK);
    CHECK(token.reads == 1);
  }
  static constexpr CK_ATTRIBUTE_TYPE kApplication[] = {CKA_CLASS, CKA_APPLICATION};
  REQUIRE(replication::ReadAttributes(token, long_one, kApplication, read, kShortOnly) == CKR_OK);
  CHECK(replication::FindAttribute(read, CKA_APPLICATION) == nullptr);  // too long: left out
  REQUIRE(replication::ReadAttributes(token, data, kApplication, read, kShortOnly) == CKR_OK);
  CHECK(Text(replication::FindAttribute(read, CKA_APPLICATION)) == "test");
}

}  // namespace
}  // namespace p11ha
