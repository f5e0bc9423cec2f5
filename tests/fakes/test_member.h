// SPDX-License-Identifier: Apache-2.0
// Control API of the test member (libp11ha-test-member.so), a PKCS#11 2.40 module that forwards
// every call to its own SoftHSM instance and injects faults on demand.
//
// Each byte copy of the .so (DIR/member-1.so, DIR/member-2.so, ...) is an independent member
// with its own globals. A copy at path P reads:
//   P.conf    at C_Initialize, key=value lines ('#' comments):
//               softhsm_lib=PATH   SoftHSM library to forward to (default
//                                  /usr/lib/softhsm/libsofthsm2.so); give each member its own
//                                  byte copy so that each gets its own SoftHSM instance
//               softhsm_conf=PATH  SOFTHSM2_CONF for the underlying C_Initialize (restored
//                                  afterwards); default: the current SOFTHSM2_CONF
//               mechanisms=0x1,0x250,...  only these are reported by C_GetMechanismList and
//                                  C_GetMechanismInfo (others: CKR_MECHANISM_INVALID)
//               served_log=PATH    for every C_Sign, C_SignFinal, C_SignRecover, C_Encrypt,
//                                  C_EncryptFinal, C_Decrypt, C_DecryptFinal, C_Digest,
//                                  C_DigestFinal, C_Verify, C_VerifyFinal, C_VerifyRecover
//                                  that SoftHSM answered with CKR_OK (length queries too),
//                                  one line "<CLOCK_REALTIME ms> <C_Name>\n" appended with a
//                                  single write() (the file is opened O_APPEND per line, so it
//                                  survives restarts of the member and of the process); injected
//                                  answers are never logged. Shows on the member's side that it
//                                  served, which the counters (they count failures too) cannot.
//   P.ctl     a fault spec, applied whenever the file changes (checked with one stat per call);
//             replace it atomically (write P.ctl.tmp, rename) when another process writes it
//   P.counts  written by p11ha_test_member_dump_counts() and by C_Finalize: one
//             "C_Name N" line for each of the 68 functions
//
// Fault spec: statements separated by newlines or ';' ('#' starts a comment). Setting a spec
// (hook or control file) replaces the previous rules, releases hung calls and drops a pending
// restart; `dead` is sticky and survives that. Several rules may match one call: a restart
// goes first, then the first `fail`, then a stall, then a hang.
//   fail FUNCTION RV [after N] [times K]  return RV (CKR_ name or number) without forwarding,
//                                         after letting N matching calls through, K times
//                                         (default: every time). A failed C_Sign, C_Encrypt...
//                                         also ends the operation in SoftHSM, as a real
//                                         failure would (not for CKR_BUFFER_TOO_SMALL)
//   hang FUNCTION [after N]               block the call (no CPU; the control file is checked
//                                         every 50 ms) until the spec changes or C_Finalize;
//                                         released by a new spec it proceeds normally, released
//                                         by C_Finalize it returns CKR_DEVICE_ERROR
//   stall FUNCTION [after N] [times K]    block like hang, K times (default: every time), but
//                                         however released return CKR_DEVICE_ERROR without
//                                         forwarding and without writing any output argument:
//                                         a caller that gave up on the call (p11ha after
//                                         call_timeout_ms) has freed those buffers. Released by
//                                         a new spec it ends the operation in SoftHSM like
//                                         `fail`; times survives C_Finalize, so `stall F times 1`
//                                         lets a re-initialised member serve again
//   dead                                  every call but C_GetFunctionList and C_Finalize
//                                         returns CKR_DEVICE_ERROR until C_Finalize (then
//                                         C_Initialize works again)
//   restart                               the next call re-initialises SoftHSM (sessions and
//                                         logins are gone, handle numbers are issued again
//                                         from the start) and returns CKR_DEVICE_ERROR; old
//                                         session handles then give CKR_SESSION_HANDLE_INVALID
//                                         until the same numbers are handed out again
//   restart FUNCTION [after N]            the same, once, at the first matching call after
//                                         letting N through (never at C_Initialize)
//   clear                                 drop the rules before it
// FUNCTION is a name like C_Sign, or `*` for all but C_GetFunctionList and C_Finalize.
// Unknown statements are ignored with a line on stderr. Every call is counted, including
// injected failures. C_Finalize keeps fail, hang, stall and targeted restart rules (and counts).
//
// The .so is linked -z nodelete: dlclose never unmaps it (a hung caller may still be inside),
// so dlopen of the same file again gets the same member and state.

#pragma once

#ifdef __cplusplus
extern "C" {
#endif

// Calls of FUNCTION ("C_Sign") served so far; -1 for an unknown name.
int p11ha_test_member_count(const char* function);
void p11ha_test_member_reset_counts(void);
// Same text as the control file; "" clears.
void p11ha_test_member_set_fault(const char* spec);
// Writes P.counts.
void p11ha_test_member_dump_counts(void);

typedef int (*P11haTestMemberCountFn)(const char*);
typedef void (*P11haTestMemberResetCountsFn)(void);
typedef void (*P11haTestMemberSetFaultFn)(const char*);
typedef void (*P11haTestMemberDumpCountsFn)(void);

#ifdef __cplusplus
}
#endif
