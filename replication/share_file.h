// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

#include "config/secure_bytes.h"
#include "replication/check_value.h"

namespace p11ha::replication {

// One custodian's share of a domain key, as stored in a share file:
//
//   p11ha-domain-share v1
//   domain <check value, 16 hex digits>
//   threshold <M>
//   shares <N>
//   index <i, 1..N>
//   data <share bytes, hex>
//   checksum <SHA-256 of the six lines above, each with its "\n", 64 hex digits>
//
// The checksum catches a damaged file before it spoils a key; the domain line tells shares of
// different domains apart. Neither authenticates: a forged share is caught after combining,
// because the rebuilt key must reproduce the domain check value.
struct ShareFile {
  std::string source;  // where it was read from, for messages
  CheckValue domain{};
  unsigned threshold = 0;
  unsigned shares = 0;
  unsigned index = 0;
  SecureBytes data;
  bool readable_by_others = false;  // set by ReadShareFile from the file's mode
};

class ShareFileError : public std::runtime_error {
 public:
  enum class Kind { kUnreadable, kInvalid, kWrite };
  ShareFileError(Kind kind, const std::string& what) : std::runtime_error(what), kind_(kind) {}
  Kind kind() const { return kind_; }

 private:
  Kind kind_;
};

inline constexpr std::string_view kShareFileMagic = "p11ha-domain-share v1";

// The file's text. It holds the share in hex: the caller wipes it (OPENSSL_cleanse).
std::string FormatShareFile(const ShareFile& share);

// Parses the text of a share file; errors name `source` and the line and what is wrong.
// The checksum is verified before any field is interpreted.
ShareFile ParseShareFile(std::string_view text, const std::string& source);

// Reads and parses; kUnreadable when the file cannot be read.
ShareFile ReadShareFile(const std::string& path);

// Creates `path` (which must not exist) with mode 0600, writes the share and fsyncs it.
void WriteShareFile(const std::string& path, const ShareFile& share);

}  // namespace p11ha::replication
