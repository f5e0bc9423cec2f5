// SPDX-License-Identifier: Apache-2.0
// How long a member may stay silent while an application's call waits on it.
#pragma once

#include <algorithm>
#include <chrono>

namespace p11ha {

// Open for the length of one application call into the module (the ABI guard opens it).
// An application call that finds every member dead or silent must answer within
// call_timeout_ms (issue 4, DESIGN.md "Failure"), so its first wait for a silent member ends a
// small reserve early: what p11ha does after giving up (mark the member down, unblock its
// sockets, log) then fits inside the timeout. Once one wait has run out, the call is being
// retried on another member, which gets the whole timeout: a healthy member that is merely
// busy must not be given up too soon. Member calls on p11ha's own threads (health probes,
// replication copies) are outside any application call and always get the whole timeout.
class ApplicationCall {
 public:
  ApplicationCall() : outer_(!State().open) {
    if (outer_) State() = {true, false};
  }
  ~ApplicationCall() {
    if (outer_) State() = {};
  }
  ApplicationCall(const ApplicationCall&) = delete;
  ApplicationCall& operator=(const ApplicationCall&) = delete;

  // How long to wait for the answer of a member call, from the moment it is under way.
  static std::chrono::milliseconds AnswerWait(std::chrono::milliseconds timeout) {
    const CallState& state = State();
    if (!state.open || state.waited_out) return timeout;
    return timeout - Reserve(timeout);
  }

  // A wait ran out: the rest of this application call is a retry.
  static void NoteWaitedOut() { State().waited_out = true; }

  // A twentieth of the timeout, between 1 ms and 50 ms: CI measured up to 10 ms from giving up
  // to the application's answer on a loaded 2-core machine.
  static std::chrono::milliseconds Reserve(std::chrono::milliseconds timeout) {
    return std::clamp(timeout / 20, std::chrono::milliseconds(1), std::chrono::milliseconds(50));
  }

 private:
  struct CallState {
    bool open = false;
    bool waited_out = false;
  };
  static CallState& State() {
    thread_local CallState state;
    return state;
  }
  const bool outer_;
};

}  // namespace p11ha
