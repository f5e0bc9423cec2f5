// SPDX-License-Identifier: Apache-2.0
#include "replication/share_file.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <vector>

namespace p11ha::replication {
namespace {

constexpr std::size_t kMaxShareFileBytes = 4096;
constexpr unsigned kMaxShares = 255;
constexpr char kDigits[] = "0123456789abcdef";

// Wipes a string that held share material, whatever way the scope is left.
struct WipeOnExit {
  std::string& text;
  ~WipeOnExit() { OPENSSL_cleanse(text.data(), text.size()); }
};

void AppendHex(std::string& out, const std::uint8_t* bytes, std::size_t size) {
  for (std::size_t i = 0; i < size; ++i) {
    out += kDigits[bytes[i] >> 4];
    out += kDigits[bytes[i] & 0xf];
  }
}

std::string ChecksumHex(std::string_view covered) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int size = 0;
  if (EVP_Digest(covered.data(), covered.size(), digest.data(), &size, EVP_sha256(), nullptr) != 1) {
    throw std::runtime_error("SHA-256 failed");
  }
  std::string hex;
  AppendHex(hex, digest.data(), size);
  return hex;
}

int Nibble(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

class Parser {
 public:
  Parser(std::string_view text, const std::string& source) : text_(text), source_(source) {}

  [[noreturn]] void Fail(const std::string& what) const {
    throw ShareFileError(ShareFileError::Kind::kInvalid,
                         source_ + ": line " + std::to_string(line_) + ": " + what);
  }

  // The value of the next line, which must read "<keyword> <value>".
  std::string_view Next(std::string_view keyword) {
    ++line_;
    if (pos_ >= text_.size()) Fail("missing '" + std::string(keyword) + "' line (file is truncated)");
    std::size_t end = text_.find('\n', pos_);
    std::string_view line = text_.substr(pos_, end == std::string_view::npos ? std::string_view::npos : end - pos_);
    pos_ = end == std::string_view::npos ? text_.size() : end + 1;
    if (line.size() <= keyword.size() || line.substr(0, keyword.size()) != keyword || line[keyword.size()] != ' ') {
      Fail("expected '" + std::string(keyword) + " ...'");
    }
    return line.substr(keyword.size() + 1);
  }

  void Magic() {
    ++line_;
    std::size_t end = text_.find('\n');
    if (text_.substr(0, end) != kShareFileMagic) {
      Fail("not a p11ha domain share (expected '" + std::string(kShareFileMagic) + "')");
    }
    pos_ = end == std::string_view::npos ? text_.size() : end + 1;
  }

  std::size_t pos() const { return pos_; }
  void Rewind(std::size_t pos, unsigned line) {
    pos_ = pos;
    line_ = line;
  }
  bool AtEnd() const { return pos_ >= text_.size(); }

  unsigned Number(std::string_view keyword, unsigned min, unsigned max) {
    std::string_view value = Next(keyword);
    unsigned number = 0;
    auto [end, error] = std::from_chars(value.data(), value.data() + value.size(), number);
    if (error != std::errc() || end != value.data() + value.size() || number < min || number > max) {
      Fail("'" + std::string(keyword) + "' must be a number from " + std::to_string(min) + " to " +
           std::to_string(max));
    }
    return number;
  }

 private:
  std::string_view text_;
  const std::string& source_;
  std::size_t pos_ = 0;
  unsigned line_ = 0;
};

}  // namespace

std::string FormatShareFile(const ShareFile& share) {
  std::string text;
  text.reserve(256 + 2 * share.data.size());  // no reallocation may leave share hex behind
  text += kShareFileMagic;
  text += "\ndomain " + CheckValueHex(share.domain);
  text += "\nthreshold " + std::to_string(share.threshold);
  text += "\nshares " + std::to_string(share.shares);
  text += "\nindex " + std::to_string(share.index);
  text += "\ndata ";
  AppendHex(text, share.data.data(), share.data.size());
  text += "\n";
  std::string checksum = ChecksumHex(text);
  text += "checksum " + checksum + "\n";
  return text;
}

ShareFile ParseShareFile(std::string_view text, const std::string& source) {
  Parser parser(text, source);
  parser.Magic();
  // First the structure, then the checksum, and only then the values: a flipped digit is
  // reported as what it is (a damaged file), not as whatever field it happened to hit.
  for (std::string_view keyword : {"domain", "threshold", "shares", "index", "data"}) parser.Next(keyword);
  std::size_t covered = parser.pos();
  std::string_view checksum = parser.Next("checksum");
  if (!parser.AtEnd()) parser.Fail("unexpected text after the checksum");
  if (checksum != ChecksumHex(text.substr(0, covered))) {
    throw ShareFileError(ShareFileError::Kind::kInvalid,
                         source + ": checksum does not match the content: the share is damaged or was edited");
  }

  ShareFile share;
  share.source = source;
  parser.Rewind(0, 0);
  parser.Magic();
  std::optional<CheckValue> domain = ParseCheckValueHex(parser.Next("domain"));
  if (!domain) parser.Fail("'domain' must be 16 hex digits");
  share.domain = *domain;
  share.threshold = parser.Number("threshold", 1, kMaxShares);
  share.shares = parser.Number("shares", share.threshold, kMaxShares);
  share.index = parser.Number("index", 1, share.shares);
  std::string_view hex = parser.Next("data");
  if (hex.size() % 2 != 0) parser.Fail("'data' must be an even number of hex digits");
  std::vector<std::uint8_t> zeros(hex.size() / 2);
  share.data = SecureBytes(std::span<const std::uint8_t>(zeros.data(), zeros.size()));
  for (std::size_t i = 0; i < zeros.size(); ++i) {
    int hi = Nibble(hex[2 * i]), lo = Nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) parser.Fail("'data' must be hex digits");
    share.data.data()[i] = static_cast<std::uint8_t>(hi << 4 | lo);
  }
  return share;
}

ShareFile ReadShareFile(const std::string& path) {
  auto unreadable = [&path](int error) {
    return ShareFileError(ShareFileError::Kind::kUnreadable, path + ": cannot read: " + std::strerror(error));
  };
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw unreadable(errno);
  struct stat st {};
  int stat_error = fstat(fd, &st) != 0 ? errno : S_ISREG(st.st_mode) ? 0 : EINVAL;
  if (stat_error != 0) {
    close(fd);
    throw unreadable(stat_error);
  }
  // One fixed buffer, wiped on every exit: the file holds share material in hex.
  std::string buffer(kMaxShareFileBytes + 1, '\0');
  WipeOnExit wipe{buffer};
  std::size_t size = 0;
  while (size < buffer.size()) {
    ssize_t n = read(fd, buffer.data() + size, buffer.size() - size);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int error = errno;
      close(fd);
      throw unreadable(error);
    }
    if (n == 0) break;
    size += static_cast<std::size_t>(n);
  }
  close(fd);
  if (size > kMaxShareFileBytes) {
    throw ShareFileError(ShareFileError::Kind::kInvalid, path + ": too large to be a p11ha domain share");
  }
  ShareFile share = ParseShareFile(std::string_view(buffer.data(), size), path);
  share.readable_by_others = (st.st_mode & (S_IRWXG | S_IRWXO)) != 0;
  return share;
}

void WriteShareFile(const std::string& path, const ShareFile& share) {
  auto failed = [&path](const char* what, int error) {
    return ShareFileError(ShareFileError::Kind::kWrite,
                          path + ": cannot " + what + ": " + std::strerror(error));
  };
  std::string text = FormatShareFile(share);
  WipeOnExit wipe{text};
  // O_EXCL: a share file is never overwritten, not even one of the same domain.
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) throw failed("create", errno);
  std::size_t done = 0;
  int error = 0;
  if (fchmod(fd, 0600) != 0) error = errno;  // umask cannot widen it, but an ACL default could
  while (error == 0 && done < text.size()) {
    ssize_t n = write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) error = errno;
    else done += static_cast<std::size_t>(n);
  }
  if (error == 0 && fsync(fd) != 0) error = errno;
  if (close(fd) != 0 && error == 0) error = errno;
  if (error != 0) {
    unlink(path.c_str());
    throw failed("write", error);
  }
}

}  // namespace p11ha::replication
