// SPDX-License-Identifier: Apache-2.0
#include "replication/archive.h"

#include <fcntl.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <limits>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string_view>

#include "replication/object_identity.h"

namespace p11ha::replication {
namespace {

constexpr std::string_view kMagic = "p11ha-archive v1\n";
// Shared by every version, so a newer archive is told apart from a file that is not one.
constexpr std::string_view kMagicFamily = "p11ha-archive v";

constexpr std::size_t kCostBytes = 1 + 4 + 4;
constexpr std::size_t kSaltBytes = 16;
constexpr std::size_t kNonceBytes = 12;
constexpr std::size_t kVerifierBytes = 32;
constexpr std::size_t kKeyBytes = 32;
constexpr std::size_t kTagBytes = 16;

constexpr std::size_t kCostOffset = kMagic.size();
constexpr std::size_t kSaltOffset = kCostOffset + kCostBytes;
constexpr std::size_t kNonceOffset = kSaltOffset + kSaltBytes;
constexpr std::size_t kVerifierOffset = kNonceOffset + kNonceBytes;
constexpr std::size_t kHeaderBytes = kVerifierOffset + kVerifierBytes;
static_assert(kHeaderBytes == 86, "the header layout is fixed by archive.h");

constexpr std::size_t kIdentityBytes = 32;
constexpr std::uint32_t kBodyVersion = 1;

// A reader must be able to hold the whole file; the same cap binds the writer so it never
// produces an archive that cannot be read back.
constexpr std::size_t kMaxArchiveFileBytes = std::size_t{1} << 30;

// The smallest encodings, used to bound a count by the bytes left before anything is
// allocated for it (see BodyReader::Count).
constexpr std::size_t kMinRecordBytes = kIdentityBytes + 8 + 1 + 4 + 4;
constexpr std::size_t kMinAttributeBytes = 8 + 4;

// Scrubs a buffer on every way out of a scope: decoded bodies carry wrapped key blobs.
struct WipeOnExit {
  std::vector<std::uint8_t>& bytes;
  ~WipeOnExit() { OPENSSL_cleanse(bytes.data(), bytes.size()); }
};

std::runtime_error OpenSslFailure(const char* step) {
  unsigned long code = ERR_get_error();
  ERR_clear_error();
  std::string detail = "unknown error";
  if (code != 0) {
    std::array<char, 256> text{};
    ERR_error_string_n(code, text.data(), text.size());
    detail = text.data();
  }
  return std::runtime_error(std::string("OpenSSL: ") + step + " failed: " + detail);
}

// Why `cost` is outside what a reader accepts, or empty. The bounds keep a forged header from
// buying unbounded work before the verifier check; N < 2^(16 r) is scrypt's own rule (RFC 7914),
// which OpenSSL enforces, so catching it here gives a message instead of an OpenSSL error.
constexpr std::uint64_t kMaxScryptMemory = std::uint64_t{256} << 20;
constexpr unsigned kMaxScryptWorkLog2 = 22;
constexpr std::uint64_t kMaxScryptWork = std::uint64_t{1} << kMaxScryptWorkLog2;

std::string CostProblem(const ScryptCost& cost) {
  if (cost.log2_n < 10 || cost.log2_n > 22) {
    return "scrypt log2(N) is " + std::to_string(cost.log2_n) + ", outside [10, 22]";
  }
  if (cost.r < 1 || cost.r > 32) return "scrypt r is " + std::to_string(cost.r) + ", outside [1, 32]";
  if (cost.p < 1 || cost.p > 16) return "scrypt p is " + std::to_string(cost.p) + ", outside [1, 16]";
  // Each bound alone still allows 16 GiB and minutes of work; these keep a forged header's
  // price near ten times the default's before the passphrase is checked.
  const std::uint64_t memory = std::uint64_t{128} * cost.r << cost.log2_n;
  if (memory > kMaxScryptMemory) {
    return "scrypt needs " + std::to_string(memory >> 20) + " MiB (128 r N), more than " +
           std::to_string(kMaxScryptMemory >> 20) + " MiB";
  }
  if ((std::uint64_t{cost.r} * cost.p << cost.log2_n) > kMaxScryptWork) {
    return "scrypt work N r p is above 2^" + std::to_string(kMaxScryptWorkLog2);
  }
  if (cost.log2_n >= 16 * cost.r) {
    return "scrypt log2(N) is " + std::to_string(cost.log2_n) + ", which r = " + std::to_string(cost.r) +
           " does not allow (log2(N) must be below 16 r)";
  }
  return {};
}

void PutU32(std::uint8_t* out, std::uint32_t value) {
  for (int i = 3; i >= 0; --i, value >>= 8) out[i] = static_cast<std::uint8_t>(value);
}

std::uint32_t GetU32(const std::uint8_t* in) {
  return std::uint32_t{in[0]} << 24 | std::uint32_t{in[1]} << 16 | std::uint32_t{in[2]} << 8 | in[3];
}

// ---- scrypt and AES-256-GCM ------------------------------------------------------------------

struct KdfDeleter {
  void operator()(EVP_KDF* kdf) const { EVP_KDF_free(kdf); }
  void operator()(EVP_KDF_CTX* ctx) const { EVP_KDF_CTX_free(ctx); }
};
struct CipherDeleter {
  void operator()(EVP_CIPHER_CTX* ctx) const { EVP_CIPHER_CTX_free(ctx); }
};
using CipherContext = std::unique_ptr<EVP_CIPHER_CTX, CipherDeleter>;

// 64 bytes: the AES key, then the passphrase verifier.
SecureBytes DeriveKeys(const SecureBytes& passphrase, std::span<const std::uint8_t> salt, const ScryptCost& cost) {
  std::unique_ptr<EVP_KDF, KdfDeleter> kdf(EVP_KDF_fetch(nullptr, "SCRYPT", nullptr));
  if (!kdf) throw OpenSslFailure("fetching scrypt");
  std::unique_ptr<EVP_KDF_CTX, KdfDeleter> ctx(EVP_KDF_CTX_new(kdf.get()));
  if (!ctx) throw OpenSslFailure("creating the scrypt context");

  std::uint64_t n = std::uint64_t{1} << cost.log2_n;
  std::uint64_t r = cost.r;
  std::uint64_t p = cost.p;
  // OpenSSL refuses above 32 MiB by default, the exact need of our default cost; size the limit
  // from the cost (already bounded) with room for OpenSSL's own bookkeeping.
  std::uint64_t maxmem = 128 * r * (n + 2) + 128 * r * p + (std::uint64_t{1} << 20);
  // A zero-length octet string still needs a valid pointer.
  static const std::uint8_t kEmpty = 0;
  void* password = const_cast<std::uint8_t*>(passphrase.empty() ? &kEmpty : passphrase.data());
  std::array<OSSL_PARAM, 7> params = {
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_PASSWORD, password, passphrase.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, const_cast<std::uint8_t*>(salt.data()), salt.size()),
      OSSL_PARAM_construct_uint64(OSSL_KDF_PARAM_SCRYPT_N, &n),
      OSSL_PARAM_construct_uint64(OSSL_KDF_PARAM_SCRYPT_R, &r),
      OSSL_PARAM_construct_uint64(OSSL_KDF_PARAM_SCRYPT_P, &p),
      OSSL_PARAM_construct_uint64(OSSL_KDF_PARAM_SCRYPT_MAXMEM, &maxmem),
      OSSL_PARAM_construct_end(),
  };
  std::array<std::uint8_t, kKeyBytes + kVerifierBytes> zeros{};
  SecureBytes keys(zeros);
  if (EVP_KDF_derive(ctx.get(), keys.data(), keys.size(), params.data()) != 1) {
    throw OpenSslFailure("scrypt");
  }
  return keys;
}

CipherContext NewGcm(bool encrypt, const SecureBytes& keys, std::span<const std::uint8_t> nonce,
                     std::span<const std::uint8_t> aad) {
  CipherContext ctx(EVP_CIPHER_CTX_new());
  if (!ctx) throw OpenSslFailure("creating the cipher context");
  if (EVP_CipherInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, nullptr, nullptr, encrypt ? 1 : 0) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, static_cast<int>(nonce.size()), nullptr) != 1 ||
      EVP_CipherInit_ex(ctx.get(), nullptr, nullptr, keys.data(), nonce.data(), -1) != 1) {
    throw OpenSslFailure("starting AES-256-GCM");
  }
  int ignored = 0;
  if (EVP_CipherUpdate(ctx.get(), nullptr, &ignored, aad.data(), static_cast<int>(aad.size())) != 1) {
    throw OpenSslFailure("AES-256-GCM additional data");
  }
  return ctx;
}

// EVP takes int lengths; feed large bodies in pieces that always fit.
void GcmUpdate(EVP_CIPHER_CTX* ctx, std::span<const std::uint8_t> in, std::uint8_t* out) {
  constexpr std::size_t kChunk = std::size_t{1} << 30;
  for (std::size_t done = 0; done < in.size();) {
    std::size_t piece = std::min(kChunk, in.size() - done);
    int written = 0;
    if (EVP_CipherUpdate(ctx, out + done, &written, in.data() + done, static_cast<int>(piece)) != 1 ||
        static_cast<std::size_t>(written) != piece) {
      throw OpenSslFailure("AES-256-GCM");
    }
    done += piece;
  }
}

// ---- body encoding ---------------------------------------------------------------------------
//
// Big-endian throughout. "bytes" is a u32 length then that many bytes.
//   u32 body version (1), u8 kind (0 archive, 1 package), bytes cluster, bytes source,
//   8 bytes domain check value, bytes created, u32 record count, count × 32-byte identity,
//   then per record: 32-byte identity, u64 object class, u8 by_wrap (0/1), bytes wrapped,
//   u32 attribute count, per attribute: u64 type, bytes value.
// CK_ULONG values travel as u64 so an archive moves between 32- and 64-bit builds.

// Writes into `out`, or with no `out` only counts, so the body buffer is sized once and never
// reallocated (a reallocation would leave an unwiped copy behind in freed memory).
class BodyWriter {
 public:
  explicit BodyWriter(std::vector<std::uint8_t>* out) : out_(out) {}

  void U8(std::uint8_t value) { Raw(&value, 1); }
  void U32(std::uint32_t value) {
    std::uint8_t bytes[4];
    PutU32(bytes, value);
    Raw(bytes, sizeof bytes);
  }
  void U64(std::uint64_t value) {
    U32(static_cast<std::uint32_t>(value >> 32));
    U32(static_cast<std::uint32_t>(value));
  }
  void Raw(const void* data, std::size_t size) {
    size_ += size;
    if (out_ != nullptr && size != 0) {
      const auto* bytes = static_cast<const std::uint8_t*>(data);
      out_->insert(out_->end(), bytes, bytes + size);
    }
  }
  // Lengths are only ever written after the counting pass has bounded the whole body to
  // kMaxArchiveFileBytes, so they fit in a u32.
  void Bytes(const void* data, std::size_t size) {
    U32(static_cast<std::uint32_t>(size));
    Raw(data, size);
  }
  void Text(const std::string& text) { Bytes(text.data(), text.size()); }

  std::size_t size() const { return size_; }

 private:
  std::vector<std::uint8_t>* out_;
  std::size_t size_ = 0;
};

void EncodeBody(const Archive& archive, BodyWriter& out) {
  const ArchiveManifest& manifest = archive.manifest;
  out.U32(kBodyVersion);
  out.U8(manifest.kind == ArchiveKind::kPackage ? 1 : 0);
  out.Text(manifest.cluster);
  out.Text(manifest.source);
  out.Raw(manifest.domain.data(), manifest.domain.size());
  out.Text(manifest.created);
  out.U32(static_cast<std::uint32_t>(manifest.identities.size()));
  for (const std::string& identity : manifest.identities) out.Raw(identity.data(), identity.size());
  for (const ArchiveRecord& record : archive.records) {
    const CopyPlan& plan = record.plan;
    out.Raw(record.identity.data(), record.identity.size());
    out.U64(plan.object_class);
    out.U8(plan.by_wrap ? 1 : 0);
    out.Bytes(plan.wrapped.data(), plan.wrapped.size());
    out.U32(static_cast<std::uint32_t>(plan.attributes.size()));
    for (const Attribute& attribute : plan.attributes) {
      out.U64(attribute.type);
      out.Bytes(attribute.value.data(), attribute.value.size());
    }
  }
}

// Every read is checked against what is left; a failure throws kMalformed naming the field.
class BodyReader {
 public:
  BodyReader(std::span<const std::uint8_t> bytes, const std::string& source) : bytes_(bytes), source_(source) {}

  [[noreturn]] void Fail(const std::string& why) const {
    throw ArchiveError(ArchiveError::Kind::kMalformed,
                       source_ + ": the archive's contents are malformed: " + why);
  }

  std::span<const std::uint8_t> Raw(std::size_t size, const char* what) {
    if (size > remaining()) Fail(std::string(what) + " runs past the end");
    std::span<const std::uint8_t> out = bytes_.subspan(offset_, size);
    offset_ += size;
    return out;
  }
  std::uint8_t U8(const char* what) { return Raw(1, what)[0]; }
  std::uint32_t U32(const char* what) { return GetU32(Raw(4, what).data()); }
  std::uint64_t U64(const char* what) {
    std::uint64_t high = U32(what);
    return high << 32 | U32(what);
  }
  std::span<const std::uint8_t> Bytes(const char* what) { return Raw(U32(what), what); }
  std::string Text(const char* what) {
    std::span<const std::uint8_t> bytes = Bytes(what);
    return std::string(bytes.begin(), bytes.end());
  }
  // A count no larger than the bytes left could hold, so a forged count cannot make the
  // reader reserve memory out of proportion to the file.
  std::size_t Count(const char* what, std::size_t min_item_bytes) {
    std::uint32_t count = U32(what);
    if (count > remaining() / min_item_bytes) {
      Fail(std::string(what) + " (" + std::to_string(count) + ") is more than the remaining bytes can hold");
    }
    return count;
  }
  template <typename T>
  T Scalar(const char* what) {
    std::uint64_t value = U64(what);
    if (value > std::numeric_limits<T>::max()) Fail(std::string(what) + " does not fit this platform");
    return static_cast<T>(value);
  }

  std::size_t remaining() const { return bytes_.size() - offset_; }

 private:
  std::span<const std::uint8_t> bytes_;
  const std::string& source_;
  std::size_t offset_ = 0;
};

// What makes `archive` unfit to seal or to trust after opening, or empty. The same rules on
// both sides: a writer bug is caught before it is sealed, a forged body after.
std::string ConsistencyProblem(const Archive& archive) {
  const ArchiveManifest& manifest = archive.manifest;
  if (manifest.kind != ArchiveKind::kArchive && manifest.kind != ArchiveKind::kPackage) {
    return "unknown archive kind";
  }
  if (manifest.identities.size() != archive.records.size()) {
    return "the manifest lists " + std::to_string(manifest.identities.size()) + " identities for " +
           std::to_string(archive.records.size()) + " records";
  }
  for (std::size_t i = 0; i < archive.records.size(); ++i) {
    const ArchiveRecord& record = archive.records[i];
    std::string where = "record " + std::to_string(i + 1);
    if (manifest.identities[i].size() != kIdentityBytes) {
      return "manifest identity " + std::to_string(i + 1) + " is not 32 bytes";
    }
    if (record.identity != manifest.identities[i]) return where + "'s identity differs from the manifest's";
    // Keys leave only wrapped under the domain key (archive.h): a key class read by attributes
    // could carry its value in the clear.
    if (IsKeyClass(record.plan.object_class) != record.plan.by_wrap) {
      return where + (record.plan.by_wrap ? " is wrapped but is not a private or secret key"
                                          : " is a private or secret key that is not wrapped");
    }
    if (record.plan.by_wrap && record.plan.wrapped.empty()) return where + " is a wrapped key with no wrapped bytes";
    if (!record.plan.by_wrap && !record.plan.wrapped.empty()) return where + " has wrapped bytes but is not a key";
  }
  return {};
}

Archive DecodeBody(std::span<const std::uint8_t> body, const std::string& source) {
  BodyReader in(body, source);
  std::uint32_t version = in.U32("body version");
  if (version != kBodyVersion) in.Fail("body version " + std::to_string(version) + " is not 1");

  Archive archive;
  ArchiveManifest& manifest = archive.manifest;
  std::uint8_t kind = in.U8("kind");
  if (kind > 1) in.Fail("kind " + std::to_string(kind) + " is neither archive nor package");
  manifest.kind = kind == 1 ? ArchiveKind::kPackage : ArchiveKind::kArchive;
  manifest.cluster = in.Text("cluster");
  manifest.source = in.Text("source");
  std::span<const std::uint8_t> domain = in.Raw(manifest.domain.size(), "domain check value");
  std::copy(domain.begin(), domain.end(), manifest.domain.begin());
  manifest.created = in.Text("creation time");

  // Each record needs its manifest identity and at least the record's own fixed fields.
  std::size_t count = in.Count("record count", kIdentityBytes + kMinRecordBytes);
  manifest.identities.reserve(count);
  for (std::size_t i = 0; i < count; ++i) {
    std::span<const std::uint8_t> identity = in.Raw(kIdentityBytes, "manifest identity");
    manifest.identities.emplace_back(identity.begin(), identity.end());
  }
  archive.records.reserve(count);
  for (std::size_t i = 0; i < count; ++i) {
    ArchiveRecord& record = archive.records.emplace_back();
    std::span<const std::uint8_t> identity = in.Raw(kIdentityBytes, "record identity");
    record.identity.assign(identity.begin(), identity.end());
    CopyPlan& plan = record.plan;
    plan.object_class = in.Scalar<CK_OBJECT_CLASS>("object class");
    std::uint8_t by_wrap = in.U8("by_wrap flag");
    if (by_wrap > 1) in.Fail("record " + std::to_string(i + 1) + "'s by_wrap flag is " + std::to_string(by_wrap));
    plan.by_wrap = by_wrap == 1;
    std::span<const std::uint8_t> wrapped = in.Bytes("wrapped key");
    plan.wrapped.assign(wrapped.begin(), wrapped.end());
    std::size_t attributes = in.Count("attribute count", kMinAttributeBytes);
    plan.attributes.reserve(attributes);
    for (std::size_t a = 0; a < attributes; ++a) {
      Attribute& attribute = plan.attributes.emplace_back();
      attribute.type = in.Scalar<CK_ATTRIBUTE_TYPE>("attribute type");
      std::span<const std::uint8_t> value = in.Bytes("attribute value");
      attribute.value.assign(value.begin(), value.end());
    }
  }
  if (in.remaining() != 0) in.Fail(std::to_string(in.remaining()) + " bytes follow the last record");
  if (std::string problem = ConsistencyProblem(archive); !problem.empty()) in.Fail(problem);
  return archive;
}

// ---- files -----------------------------------------------------------------------------------

class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  ~FileDescriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  int get() const { return fd_; }
  // close() reports delayed write errors on some file systems, so a writer must see its result.
  int Close() {
    int result = ::close(fd_);
    fd_ = -1;
    return result;
  }

 private:
  int fd_;
};

ArchiveError Unreadable(const std::string& path, const std::string& what, int error) {
  return ArchiveError(ArchiveError::Kind::kUnreadable, path + ": cannot " + what + ": " + std::strerror(error));
}

int WriteAll(int fd, std::span<const std::uint8_t> bytes) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno;
    done += static_cast<std::size_t>(n);
  }
  return 0;
}

int SyncDirectory(const std::string& directory) {
  FileDescriptor fd(::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0) return errno;
  if (::fsync(fd.get()) != 0) return errno;
  return fd.Close() == 0 ? 0 : errno;
}

}  // namespace

std::vector<std::uint8_t> SealArchive(const Archive& archive, const SecureBytes& passphrase, const ScryptCost& cost) {
  if (std::string problem = CostProblem(cost); !problem.empty()) throw std::invalid_argument(problem);
  if (std::string problem = ConsistencyProblem(archive); !problem.empty()) throw std::invalid_argument(problem);

  BodyWriter counter(nullptr);
  EncodeBody(archive, counter);
  if (counter.size() > kMaxArchiveFileBytes - kHeaderBytes - kTagBytes) {
    throw std::invalid_argument("the archive would exceed 1 GiB, more than a reader accepts");
  }
  std::vector<std::uint8_t> body;
  WipeOnExit wipe_body{body};
  body.reserve(counter.size());
  BodyWriter writer(&body);
  EncodeBody(archive, writer);

  std::vector<std::uint8_t> file(kHeaderBytes);
  std::copy(kMagic.begin(), kMagic.end(), file.begin());
  file[kCostOffset] = cost.log2_n;
  PutU32(&file[kCostOffset + 1], cost.r);
  PutU32(&file[kCostOffset + 5], cost.p);
  if (RAND_bytes(&file[kSaltOffset], static_cast<int>(kSaltBytes + kNonceBytes)) != 1) {
    throw OpenSslFailure("drawing the salt and nonce");
  }
  SecureBytes keys = DeriveKeys(passphrase, std::span(file).subspan(kSaltOffset, kSaltBytes), cost);
  std::copy(keys.data() + kKeyBytes, keys.data() + kKeyBytes + kVerifierBytes, &file[kVerifierOffset]);

  CipherContext ctx = NewGcm(true, keys, std::span(file).subspan(kNonceOffset, kNonceBytes),
                             std::span(file).first(kHeaderBytes));
  file.resize(kHeaderBytes + body.size() + kTagBytes);
  GcmUpdate(ctx.get(), body, file.data() + kHeaderBytes);
  int ignored = 0;
  std::uint8_t* tag = file.data() + kHeaderBytes + body.size();
  if (EVP_EncryptFinal_ex(ctx.get(), tag, &ignored) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, static_cast<int>(kTagBytes), tag) != 1) {
    throw OpenSslFailure("finishing AES-256-GCM");
  }
  return file;
}

Archive OpenArchive(std::span<const std::uint8_t> file, const SecureBytes& passphrase, const std::string& source) {
  auto starts_with = [&file](std::string_view prefix) {
    return file.size() >= prefix.size() && std::equal(prefix.begin(), prefix.end(), file.begin());
  };
  if (!starts_with(kMagicFamily)) {
    throw ArchiveError(ArchiveError::Kind::kNotAnArchive, source + ": not a p11ha archive (no p11ha-archive header)");
  }
  if (!starts_with(kMagic)) {
    throw ArchiveError(ArchiveError::Kind::kNotAnArchive,
                       source + ": an unsupported p11ha archive version (this build reads v1)");
  }
  if (file.size() < kHeaderBytes + kTagBytes) {
    throw ArchiveError(ArchiveError::Kind::kNotAnArchive,
                       source + ": truncated: " + std::to_string(file.size()) + " bytes is less than the " +
                           std::to_string(kHeaderBytes + kTagBytes) + " of an empty archive");
  }
  ScryptCost cost;
  cost.log2_n = file[kCostOffset];
  cost.r = GetU32(&file[kCostOffset + 1]);
  cost.p = GetU32(&file[kCostOffset + 5]);
  if (std::string problem = CostProblem(cost); !problem.empty()) {
    throw ArchiveError(ArchiveError::Kind::kNotAnArchive,
                       source + ": the header's " + problem + "; the file is damaged or was not written by p11ha");
  }

  SecureBytes keys = DeriveKeys(passphrase, file.subspan(kSaltOffset, kSaltBytes), cost);
  if (CRYPTO_memcmp(keys.data() + kKeyBytes, &file[kVerifierOffset], kVerifierBytes) != 0) {
    throw ArchiveError(ArchiveError::Kind::kWrongPassphrase,
                       source + ": wrong passphrase (or the archive's header was changed)");
  }

  std::span<const std::uint8_t> ciphertext = file.subspan(kHeaderBytes, file.size() - kHeaderBytes - kTagBytes);
  std::span<const std::uint8_t> tag = file.last(kTagBytes);
  CipherContext ctx = NewGcm(false, keys, file.subspan(kNonceOffset, kNonceBytes), file.first(kHeaderBytes));
  std::vector<std::uint8_t> body(ciphertext.size());
  WipeOnExit wipe_body{body};
  GcmUpdate(ctx.get(), ciphertext, body.data());
  std::array<std::uint8_t, kTagBytes> expected_tag{};
  std::copy(tag.begin(), tag.end(), expected_tag.begin());
  std::array<std::uint8_t, 16> no_output{};  // GCM's final step writes nothing, but wants a buffer
  int ignored = 0;
  if (EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, static_cast<int>(kTagBytes), expected_tag.data()) != 1) {
    throw OpenSslFailure("setting the AES-256-GCM tag");
  }
  if (EVP_DecryptFinal_ex(ctx.get(), no_output.data(), &ignored) != 1) {
    ERR_clear_error();
    throw ArchiveError(ArchiveError::Kind::kTampered,
                       source + ": the archive was changed or damaged (authentication failed)");
  }
  return DecodeBody(body, source);
}

std::vector<std::uint8_t> ReadArchiveFile(const std::string& path) {
  FileDescriptor fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) throw Unreadable(path, "read", errno);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw Unreadable(path, "read", errno);
  if (!S_ISREG(st.st_mode)) {
    throw ArchiveError(ArchiveError::Kind::kUnreadable, path + ": cannot read: not a regular file");
  }
  auto too_large = [&path] {
    return ArchiveError(ArchiveError::Kind::kUnreadable,
                        path + ": cannot read: larger than 1 GiB, too large for a p11ha archive");
  };
  if (static_cast<std::uint64_t>(st.st_size) > kMaxArchiveFileBytes) throw too_large();

  // Read to end of file rather than trusting st_size: the file may still be growing. One byte
  // past the cap is room enough to notice that it did.
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(st.st_size) + 1);
  std::size_t size = 0;
  for (;;) {
    if (size == bytes.size()) {
      if (bytes.size() > kMaxArchiveFileBytes) throw too_large();
      bytes.resize(std::min(bytes.size() * 2, kMaxArchiveFileBytes + 1));
    }
    ssize_t n = ::read(fd.get(), bytes.data() + size, bytes.size() - size);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw Unreadable(path, "read", errno);
    if (n == 0) break;
    size += static_cast<std::size_t>(n);
  }
  if (size > kMaxArchiveFileBytes) throw too_large();
  bytes.resize(size);
  return bytes;
}

void WriteArchiveFile(const std::string& path, std::span<const std::uint8_t> bytes) {
  std::filesystem::path final_path(path);
  if (!final_path.has_filename()) {
    throw ArchiveError(ArchiveError::Kind::kUnreadable, path + ": cannot write: not a file name");
  }
  std::string directory = final_path.has_parent_path() ? final_path.parent_path().string() : ".";
  // Beside the final name, so link() stays within one file system; hidden, so a crash leaves
  // nothing that looks like an archive.
  std::string temp =
      (std::filesystem::path(directory) / ("." + final_path.filename().string() + ".tmp-XXXXXX")).string();

  FileDescriptor fd(::mkostemp(temp.data(), O_CLOEXEC));
  if (fd.get() < 0) throw Unreadable(path, "create a temporary file in " + directory, errno);
  auto fail = [&](const std::string& what, int error) {
    ::unlink(temp.c_str());
    return Unreadable(path, what, error);
  };
  // mkstemp already creates 0600; set it again in case a default ACL widened it.
  if (::fchmod(fd.get(), 0600) != 0) throw fail("set mode 0600 on " + temp, errno);
  if (int error = WriteAll(fd.get(), bytes); error != 0) throw fail("write " + temp, error);
  if (::fsync(fd.get()) != 0) throw fail("sync " + temp, errno);
  if (fd.Close() != 0) throw fail("write " + temp, errno);

  // link() creates the final name only if it does not exist, atomically: unlike rename(), it can
  // never replace an archive that appeared in the meantime.
  if (::link(temp.c_str(), path.c_str()) != 0) {
    int error = errno;
    ::unlink(temp.c_str());
    if (error == EEXIST) {
      throw ArchiveError(ArchiveError::Kind::kUnreadable, path + ": already exists; an archive is never overwritten");
    }
    throw Unreadable(path, "create", error);
  }
  ::unlink(temp.c_str());
  // Without this the new name may not survive a crash; undo it so a failure means no archive.
  if (int error = SyncDirectory(directory); error != 0) {
    ::unlink(path.c_str());
    throw Unreadable(path, "sync the directory " + directory, error);
  }
}

const char* ArchiveKindName(ArchiveKind kind) {
  switch (kind) {
    case ArchiveKind::kArchive:
      return "archive";
    case ArchiveKind::kPackage:
      return "package";
  }
  return "unknown";
}

}  // namespace p11ha::replication
