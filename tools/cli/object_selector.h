// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <p11-kit/uri.h>

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "replication/archive.h"
#include "replication/object_identity.h"

namespace p11ha::cli {

// One `--match` of `package export`: `label=NAME`, `id=HEX`, or an RFC 7512 object URI
// (`pkcs11:object=NAME;id=%01;type=private`), matched by p11-kit against class, label and id.
struct ObjectSelector {
  std::string text;  // as given, for messages
  std::optional<std::string> label;
  std::optional<std::vector<unsigned char>> id;
  std::shared_ptr<P11KitUri> uri;
};

// Throws Stop (exit 2) naming the selector that does not parse.
std::vector<ObjectSelector> ParseSelectors(const std::vector<std::string>& texts);

// Whether any selector matches; counts each matching selector in `hits` (one per selector).
bool MatchAny(const std::vector<ObjectSelector>& selectors, const replication::ObjectSummary& summary,
              std::vector<std::size_t>& hits);

// 'EC private key "k1" id 01', from the attributes an archive record carries.
std::string DescribeRecord(const replication::ArchiveRecord& record);

}  // namespace p11ha::cli
