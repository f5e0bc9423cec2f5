// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "config/secure_bytes.h"
#include "replication/check_value.h"
#include "replication/object_copy.h"

namespace p11ha::replication {

// An archive (a backup) or a package (chosen keys moved between clusters): the same format.
//
// The file is a clear header, then one AES-256-GCM ciphertext of the body, then its tag:
//   header: "p11ha-archive v1\n" (17 bytes), scrypt log2(N) (1 byte), r (4 bytes, big-endian),
//           p (4 bytes, big-endian), salt (16 bytes), GCM nonce (12 bytes),
//           passphrase verifier (32 bytes)
//   ciphertext (the body), tag (16 bytes)
// scrypt(passphrase, salt, N, r, p) gives 64 bytes: the first 32 are the AES key, the last 32
// the verifier. A wrong passphrase is told apart from a damaged file by the verifier; the
// whole header is the GCM additional data, so no byte of the file can change unnoticed.
// Nothing in the body is trusted before the tag verifies.
//
// Secret and private keys travel only as blobs wrapped under the domain key (CopyPlan::wrapped),
// so the archive never holds key material in the clear, even inside the seal.
enum class ArchiveKind { kArchive, kPackage };

struct ArchiveManifest {
  ArchiveKind kind = ArchiveKind::kArchive;
  std::string cluster;  // the source cluster's label
  std::string source;   // "cluster", a member name, or a token URI
  CheckValue domain{};  // the domain key every wrapped blob is under
  std::string created;  // ISO 8601 UTC, e.g. 2026-12-02T17:04:05Z
  // One per record, in record order: the object identity (raw SHA-256, ObjectSummary::identity).
  std::vector<std::string> identities;
};

struct ArchiveRecord {
  std::string identity;  // raw 32 bytes, equal to the manifest's entry at the same index
  CopyPlan plan;         // what ApplyCopy needs on a target of the same domain
};

struct Archive {
  ArchiveManifest manifest;
  std::vector<ArchiveRecord> records;
};

class ArchiveError : public std::runtime_error {
 public:
  enum class Kind {
    kUnreadable,        // the file cannot be read or written (I/O)
    kNotAnArchive,      // no p11ha-archive header, or an unknown version
    kWrongPassphrase,   // the verifier does not match
    kTampered,          // the verifier matches but the tag does not: the file was changed
    kMalformed,         // the tag verified but the body does not parse (a bug, or a forged key)
  };
  ArchiveError(Kind kind, const std::string& what) : std::runtime_error(what), kind_(kind) {}
  Kind kind() const { return kind_; }

 private:
  Kind kind_;
};

// scrypt cost. The default (N = 2^15, r = 8, p = 1) takes about 0.1 s and 32 MiB; tests may
// lower it. Opening accepts log2(N) in [10, 22], r in [1, 32], p in [1, 16], with 128 r N at
// most 256 MiB, N r p at most 2^22 and, as scrypt requires, log2(N) < 16 r: a forged header
// cannot make the reader spend more than about ten times the default's memory and time before
// the verifier check. Sealing refuses a cost outside these bounds.
struct ScryptCost {
  std::uint8_t log2_n = 15;
  std::uint32_t r = 8;
  std::uint32_t p = 1;
};

// The file's bytes. Throws std::runtime_error when OpenSSL fails, std::invalid_argument when
// the manifest's identities do not match the records, a private or secret key record is not
// wrapped (or a wrapped one is not such a key), or `cost` is outside the bounds above.
std::vector<std::uint8_t> SealArchive(const Archive& archive, const SecureBytes& passphrase,
                                      const ScryptCost& cost = {});

// Verifies and parses. Throws ArchiveError; `source` names the file in messages. An OpenSSL
// failure (scrypt cannot get its memory) is a std::runtime_error.
Archive OpenArchive(std::span<const std::uint8_t> file, const SecureBytes& passphrase, const std::string& source);

// Reads `path` whole (ArchiveError kUnreadable on failure).
std::vector<std::uint8_t> ReadArchiveFile(const std::string& path);

// Writes `bytes` to `path` with mode 0600: to a temporary file beside it, fsynced, then linked
// to `path` (link() fails if `path` exists, where rename() would replace it),
// so a failed write never leaves a partial archive. Refuses to overwrite an existing file
// (ArchiveError kUnreadable naming the path).
void WriteArchiveFile(const std::string& path, std::span<const std::uint8_t> bytes);

const char* ArchiveKindName(ArchiveKind kind);  // "archive" | "package"

}  // namespace p11ha::replication
