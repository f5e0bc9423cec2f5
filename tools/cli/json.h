// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <string>
#include <string_view>

namespace p11ha::cli {

// `text` as a JSON string literal, quotes included. Token fields are fixed-width and may cut a
// UTF-8 sequence in half, so invalid UTF-8 becomes U+FFFD instead of producing invalid JSON.
std::string JsonString(std::string_view text);

}  // namespace p11ha::cli
