// SPDX-License-Identifier: Apache-2.0
#include "tools/cli/secret_input.h"

#include <openssl/crypto.h>
#include <termios.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <iostream>

#include "config/config.h"

namespace p11ha::cli {
namespace {

// Echo off for a scope; restored however the scope is left.
class NoEcho {
 public:
  explicit NoEcho(int fd) : fd_(fd) {
    if (tcgetattr(fd, &saved_) != 0) return;
    termios quiet = saved_;
    quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
    quiet.c_lflag |= ECHONL;
    active_ = tcsetattr(fd, TCSAFLUSH, &quiet) == 0;
  }
  ~NoEcho() {
    if (active_) tcsetattr(fd_, TCSAFLUSH, &saved_);
  }
  NoEcho(const NoEcho&) = delete;
  NoEcho& operator=(const NoEcho&) = delete;

 private:
  int fd_;
  termios saved_{};
  bool active_ = false;
};

SecureBytes Prompt(const std::string& what, const std::string& option) {
  if (!isatty(STDIN_FILENO)) {
    throw SecretInputError("no " + option + " given and no terminal to ask for the " + what + " on");
  }
  std::cerr << what << ": " << std::flush;
  std::array<char, 256> line{};
  std::size_t size = 0;
  bool complete = false;
  {
    NoEcho no_echo(STDIN_FILENO);
    while (size < line.size()) {
      char c = 0;
      ssize_t n = read(STDIN_FILENO, &c, 1);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      if (c == '\n') {
        complete = true;
        break;
      }
      line[size++] = c;
    }
  }
  if (size > 0 && line[size - 1] == '\r') --size;
  SecureBytes secret(std::string_view(line.data(), size));
  OPENSSL_cleanse(line.data(), line.size());
  if (!complete) throw SecretInputError("the " + what + " was not entered (or is longer than 255 bytes)");
  if (secret.empty()) throw SecretInputError("the " + what + " is empty");
  return secret;
}

}  // namespace

SecureBytes ReadSecret(const std::string& file, const std::string& what, const std::string& option) {
  if (file.empty()) return Prompt(what, option);
  std::string text;
  try {
    text = config::ReadSecretFile(file);
  } catch (const config::ConfigError& e) {
    throw SecretInputError(option + ": " + e.what());
  }
  SecureBytes secret(text);
  OPENSSL_cleanse(text.data(), text.size());
  return secret;
}

}  // namespace p11ha::cli
