// SPDX-License-Identifier: Apache-2.0
#include "tools/cli/object_selector.h"

#include <p11-kit/uri.h>

#include "replication/attributes.h"
#include "tools/cli/command.h"

namespace p11ha::cli {
namespace {

std::optional<std::vector<unsigned char>> ParseHex(const std::string& hex) {
  if (hex.empty() || hex.size() % 2 != 0) return std::nullopt;
  std::vector<unsigned char> bytes;
  for (std::size_t i = 0; i < hex.size(); i += 2) {
    unsigned value = 0;
    for (char c : hex.substr(i, 2)) {
      value <<= 4;
      if (c >= '0' && c <= '9') value |= c - '0';
      else if (c >= 'a' && c <= 'f') value |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') value |= c - 'A' + 10;
      else return std::nullopt;
    }
    bytes.push_back(static_cast<unsigned char>(value));
  }
  return bytes;
}

bool Matches(const ObjectSelector& selector, const replication::ObjectSummary& summary) {
  if (selector.label) return summary.label == *selector.label;
  if (selector.id) return summary.id == *selector.id;
  CK_OBJECT_CLASS object_class = summary.object_class;
  std::string label = summary.label;
  std::vector<CK_BYTE> id = summary.id;
  CK_ATTRIBUTE attributes[] = {{CKA_CLASS, &object_class, sizeof object_class},
                               {CKA_LABEL, label.data(), label.size()},
                               {CKA_ID, id.data(), id.size()}};
  return p11_kit_uri_match_attributes(selector.uri.get(), attributes, 3) == 1;
}

}  // namespace

std::vector<ObjectSelector> ParseSelectors(const std::vector<std::string>& texts) {
  std::vector<ObjectSelector> selectors;
  for (const std::string& text : texts) {
    ObjectSelector selector{text, std::nullopt, std::nullopt, nullptr};
    if (text.rfind("label=", 0) == 0 && text.size() > 6) {
      selector.label = text.substr(6);
    } else if (text.rfind("id=", 0) == 0) {
      selector.id = ParseHex(text.substr(3));
      if (!selector.id) throw Stop{kExitUsage, "--match " + text + ": the id must be hex digits, two per byte"};
    } else if (text.rfind("pkcs11:", 0) == 0) {
      selector.uri = std::shared_ptr<P11KitUri>(p11_kit_uri_new(), &p11_kit_uri_free);
      if (p11_kit_uri_parse(text.c_str(), P11_KIT_URI_FOR_OBJECT, selector.uri.get()) != P11_KIT_URI_OK)
        throw Stop{kExitUsage, "--match " + text + ": not a PKCS#11 object URI (RFC 7512)"};
    } else {
      throw Stop{kExitUsage, "--match " + text + ": give label=NAME, id=HEX or a pkcs11: URI"};
    }
    selectors.push_back(std::move(selector));
  }
  return selectors;
}

bool MatchAny(const std::vector<ObjectSelector>& selectors, const replication::ObjectSummary& summary,
              std::vector<std::size_t>& hits) {
  bool any = false;
  for (std::size_t i = 0; i < selectors.size(); ++i) {
    if (!Matches(selectors[i], summary)) continue;
    ++hits[i];
    any = true;
  }
  return any;
}

std::string DescribeRecord(const replication::ArchiveRecord& record) {
  const replication::AttributeList& attributes = record.plan.attributes;
  replication::ObjectSummary summary;
  summary.object_class = record.plan.object_class;
  summary.key_type = replication::ScalarOf<CK_KEY_TYPE>(attributes, CKA_KEY_TYPE).value_or(CK_UNAVAILABLE_INFORMATION);
  summary.label = replication::StringOf(attributes, CKA_LABEL);
  if (const replication::Attribute* id = replication::FindAttribute(attributes, CKA_ID)) summary.id = id->value;
  return replication::DescribeObject(summary);
}

}  // namespace p11ha::cli
