// SPDX-License-Identifier: Apache-2.0
#include "provider/core/catalog_search.h"

#include <catch2/catch.hpp>
#include <string>
#include <thread>

#include "provider/core/object_catalog.h"

namespace p11ha {
namespace {

CK_ATTRIBUTE Text(CK_ATTRIBUTE_TYPE type, std::string& text) { return {type, text.data(), CK_ULONG{text.size()}}; }

ObjectFacts Facts(const std::string& identity, CK_OBJECT_CLASS object_class, bool is_private = false) {
  ObjectFacts facts;
  facts.identity = identity;
  facts.object_class = object_class;
  facts.token = true;
  facts.is_private = is_private;
  return facts;
}

SearchKeys Keys(const std::string& label, std::optional<std::vector<CK_BYTE>> id = std::nullopt,
                std::optional<CK_KEY_TYPE> key_type = std::nullopt) {
  return SearchKeys{key_type, label, std::move(id)};
}

TEST_CASE("catalog search: only templates of attributes the catalog keeps, in their exact form, are its to answer") {
  CK_OBJECT_CLASS key_class = CKO_PRIVATE_KEY;
  CK_KEY_TYPE ec = CKK_EC;
  CK_BBOOL yes = CK_TRUE, odd = 2;
  std::string label = "signer", id = "\x01\x02";
  CK_ATTRIBUTE usual[] = {{CKA_CLASS, &key_class, sizeof key_class}, {CKA_KEY_TYPE, &ec, sizeof ec},
                          {CKA_TOKEN, &yes, sizeof yes},           {CKA_PRIVATE, &yes, sizeof yes},
                          Text(CKA_LABEL, label),                  Text(CKA_ID, id)};
  CHECK(SearchTemplate::Parse(usual));
  CHECK(SearchTemplate::Parse({}));  // every object

  CK_ATTRIBUTE other[] = {{CKA_SIGN, &yes, sizeof yes}};
  CHECK_FALSE(SearchTemplate::Parse(other));
  CK_ATTRIBUTE short_class[] = {{CKA_CLASS, &key_class, 4}};
  CHECK_FALSE(SearchTemplate::Parse(short_class));
  CK_ATTRIBUTE twice[] = {Text(CKA_LABEL, label), Text(CKA_LABEL, id)};
  CHECK_FALSE(SearchTemplate::Parse(twice));
  CK_ATTRIBUTE odd_flag[] = {{CKA_TOKEN, &odd, sizeof odd}};
  CHECK_FALSE(SearchTemplate::Parse(odd_flag));
  CK_ATTRIBUTE null_value[] = {{CKA_LABEL, nullptr, 3}};
  CHECK_FALSE(SearchTemplate::Parse(null_value));
  CK_ATTRIBUTE empty_label[] = {{CKA_LABEL, nullptr, 0}};
  CHECK(SearchTemplate::Parse(empty_label));
}

TEST_CASE("catalog search: a template matches as a member would, and an absent attribute matches nothing") {
  std::string label = "signer", empty;
  std::string id = "\x01";
  CK_OBJECT_CLASS data_class = CKO_DATA;
  CK_ATTRIBUTE by_label[] = {Text(CKA_LABEL, label)};
  CK_ATTRIBUTE by_id[] = {Text(CKA_ID, id)};
  CK_ATTRIBUTE by_empty_label[] = {Text(CKA_LABEL, empty)};
  CK_ATTRIBUTE data_by_label[] = {{CKA_CLASS, &data_class, sizeof data_class}, Text(CKA_LABEL, label)};

  ObjectFacts key = Facts("k", CKO_PRIVATE_KEY, true);
  SearchKeys key_keys = Keys("signer", std::vector<CK_BYTE>{0x01}, CKK_EC);
  ObjectFacts data = Facts("d", CKO_DATA);
  SearchKeys data_keys{std::nullopt, std::string(), std::nullopt};  // no CKA_ID on data objects

  CHECK(SearchTemplate::Parse(by_label)->Matches(key, key_keys));
  CHECK(SearchTemplate::Parse(by_id)->Matches(key, key_keys));
  CHECK_FALSE(SearchTemplate::Parse(data_by_label)->Matches(key, key_keys));
  CHECK_FALSE(SearchTemplate::Parse(by_id)->Matches(data, data_keys));
  CHECK(SearchTemplate::Parse(by_empty_label)->Matches(data, data_keys));
  CHECK_FALSE(SearchTemplate::Parse(by_empty_label)->Matches(key, key_keys));
}

TEST_CASE("object catalog: an operation's key lookup gives every holder of a visible object, and nothing for p11ha's own") {
  ObjectCatalog catalog;
  // One identity registered on six members merges into one object: more holders than fit inline.
  CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
  for (std::size_t member = 0; member < 6; ++member) {
    const CK_OBJECT_HANDLE handle =
        catalog.Register({member, 7, 100 + member}, Facts("k", CKO_PRIVATE_KEY, true), CK_INVALID_HANDLE, Keys("k"));
    if (member == 0) key = handle;
    REQUIRE(handle == key);
  }
  ObjectFacts own = Facts("domain", CKO_SECRET_KEY, true);
  own.hidden = true;
  const CK_OBJECT_HANDLE domain = catalog.Register({0, 7, 200}, own, CK_INVALID_HANDLE, Keys("d"));

  const auto places = catalog.PlacesOfVisible(key);
  REQUIRE(places);
  CHECK(places->handle == key);
  REQUIRE(places->holders.size() == 6);
  for (std::size_t member = 0; member < 6; ++member) CHECK(places->HandleOn(member, 7) == 100 + member);
  CHECK_FALSE(places->HandleOn(2, 8));  // member 2 restarted since: its handle means nothing now
  CHECK(places->HandleOn(5, 7) == catalog.Get(key)->HandleOn(5, 7));

  CHECK(catalog.Get(domain));  // p11ha itself still finds its own object
  CHECK_FALSE(catalog.PlacesOfVisible(domain));
  CHECK_FALSE(catalog.PlacesOfVisible(domain + 1000));
}

TEST_CASE("object catalog: a match lists visible objects on serving members in their current epoch, oldest first") {
  ObjectCatalog catalog;
  const CK_OBJECT_HANDLE a = catalog.Register({0, 1, 10}, Facts("a", CKO_DATA), CK_INVALID_HANDLE, Keys("x"));
  const CK_OBJECT_HANDLE b = catalog.Register({0, 1, 11}, Facts("b", CKO_DATA), CK_INVALID_HANDLE, Keys("x"));
  ObjectFacts hidden = Facts("h", CKO_DATA);
  hidden.hidden = true;
  catalog.Register({0, 1, 12}, hidden, CK_INVALID_HANDLE, Keys("x"));
  const CK_OBJECT_HANDLE only_on_1 = catalog.Register({1, 5, 20}, Facts("c", CKO_DATA), CK_INVALID_HANDLE, Keys("x"));
  std::string x = "x";
  CK_ATTRIBUTE by_x[] = {Text(CKA_LABEL, x)};
  auto search = *SearchTemplate::Parse(by_x);

  CHECK(catalog.Match(search, {1, 5}, 0b11) == std::vector<CK_OBJECT_HANDLE>{a, b, only_on_1});
  CHECK(catalog.Match(search, {1, 5}, 0b01) == std::vector<CK_OBJECT_HANDLE>{a, b});  // member 1 not serving
  CHECK(catalog.Match(search, {1, 6}, 0b11) == std::vector<CK_OBJECT_HANDLE>{a, b});  // member 1 restarted

  std::string y = "y";
  CK_ATTRIBUTE relabel[] = {Text(CKA_LABEL, y)};
  catalog.ApplySearchKeys(b, relabel);
  CHECK(catalog.Match(search, {1, 5}, 0b01) == std::vector<CK_OBJECT_HANDLE>{a});
  CHECK(catalog.SetLabelAndId(b, Keys("x"), search));  // read again: it matches once more
  CHECK(catalog.Match(search, {1, 5}, 0b01) == std::vector<CK_OBJECT_HANDLE>{a, b});
  CHECK_FALSE(catalog.SetLabelAndId(b, Keys("z"), search));
}

TEST_CASE("object catalog: a listing drops holders it did not find, but not ones added while it ran") {
  ObjectCatalog catalog;
  const CK_OBJECT_HANDLE kept = catalog.Register({0, 1, 10}, Facts("a", CKO_DATA), CK_INVALID_HANDLE, Keys("a"));
  const CK_OBJECT_HANDLE gone = catalog.Register({0, 1, 11}, Facts("b", CKO_DATA), CK_INVALID_HANDLE, Keys("b"));
  const CK_OBJECT_HANDLE elsewhere = catalog.Register({0, 1, 12}, Facts("c", CKO_DATA), CK_INVALID_HANDLE, Keys("c"));
  catalog.AddHolder(elsewhere, {1, 1, 30});
  const std::uint64_t stamp = catalog.Stamp();  // the listing of member 0 begins
  const CK_OBJECT_HANDLE born = catalog.Register({0, 1, 13}, Facts("d", CKO_DATA), CK_INVALID_HANDLE, Keys("d"));

  catalog.Prune(0, 1, stamp, {10});
  CHECK(catalog.Get(kept));
  CHECK_FALSE(catalog.Get(gone));
  CHECK(catalog.Get(born));
  auto still = catalog.Get(elsewhere);
  REQUIRE(still);
  REQUIRE(still->holders.size() == 1);
  CHECK(still->holders[0].member == 1);
  CHECK_FALSE(catalog.Lookup(0, 1, 12));
}

TEST_CASE("catalog freshness: a complete listing of the serving members lets the catalog answer for max_age") {
  using namespace std::chrono_literals;
  CatalogFreshness freshness(1000ms);
  const CatalogFreshness::Serving serving{{0, 1}, {1, 4}};
  CHECK_FALSE(freshness.Fresh(serving, 7));

  REQUIRE(freshness.BeginListing());
  CHECK_FALSE(freshness.BeginListing());  // one listing at a time
  freshness.EndListing(true, serving, 7, CatalogFreshness::Clock::now());
  CHECK(freshness.Fresh(serving, 7));
  CHECK_FALSE(freshness.Fresh(serving, 8));                       // logged in or out since
  CHECK_FALSE(freshness.Fresh({{0, 1}}, 7));                      // a member stopped serving
  CHECK_FALSE(freshness.Fresh({{0, 1}, {1, 5}}, 7));              // a member restarted
  CHECK_FALSE(freshness.Fresh({{0, 1}, {1, 4}, {2, 1}}, 7));      // a member joined
  std::this_thread::sleep_for(1100ms);
  CHECK_FALSE(freshness.Fresh(serving, 7));

  REQUIRE(freshness.BeginListing());
  freshness.EndListing(false, serving, 7, CatalogFreshness::Clock::now());
  CHECK_FALSE(freshness.Fresh(serving, 7));
  CHECK_FALSE(CatalogFreshness(0ms).enabled());
}

}  // namespace
}  // namespace p11ha
