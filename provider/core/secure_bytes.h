// SPDX-License-Identifier: Apache-2.0
// SecureBytes moved to config/ so that replication/ can hold secrets without depending on
// provider/; this forwarder keeps the provider's includes unchanged.
#pragma once

#include "config/secure_bytes.h"
