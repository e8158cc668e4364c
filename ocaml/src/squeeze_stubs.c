/* squeeze: OCaml stubs over the C API in squeeze.h.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Each balancing call runs like this: the stub copies the settings out of the OCaml record,
 * releases the runtime lock and calls libsqueeze. libsqueeze calls back through the sqz_io
 * trampolines below on this same thread; each trampoline re-acquires the runtime lock, calls
 * the OCaml closure with caml_callback*_exn (so an OCaml exception never unwinds through the
 * library's frames), and releases the lock again before returning into the library.
 *
 * A closure that raises stops the operation: the exception is kept in a local root of the
 * stub's frame, the trampoline reports failure (the library then ends the call with
 * SQZ_ERR_BACKEND), every later callback refuses at once, and the stub re-raises the original
 * exception once the library has returned.
 *
 * No trampoline may raise either: they release the lock with
 * caml_enter_blocking_section_no_pending, which, unlike caml_enter_blocking_section, never
 * runs OCaml signal handlers (a handler may raise). Pending signals are handled at the next
 * OCaml poll point instead.
 */

#define CAML_NAME_SPACE
#include <caml/alloc.h>
#include <caml/callback.h>
#include <caml/custom.h>
#include <caml/fail.h>
#include <caml/memory.h>
#include <caml/mlvalues.h>
#include <caml/signals.h>

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <squeeze.h>

#include "squeeze_handle.h"

/* Field positions of Squeeze.domain. */
enum {
  DOMAIN_DOMID,
  DOMAIN_CAN_BALLOON,
  DOMAIN_DYNAMIC_MIN,
  DOMAIN_TARGET,
  DOMAIN_DYNAMIC_MAX,
  DOMAIN_ACTUAL,
  DOMAIN_MAXMEM,
  DOMAIN_INACCURACY,
  DOMAIN_WEIGHT,
};

/* Field positions of Squeeze.raw_io. */
enum {
  RAW_MAKE_HOST,
  RAW_SET_MAXMEM,
  RAW_EXECUTE_ACTION,
  RAW_WAIT,
  RAW_NOW,
  RAW_SUCCESS,
  RAW_TARGET_HOST_FREE_MEM,
  RAW_FREE_MEMORY_TOLERANCE,
  RAW_FISTPOINTS,
};

/* Block tags of Squeeze.reply (Done is tag 0, and so on). */
enum {
  REPLY_DONE,
  REPLY_NOT_ENOUGH_MEMORY,
  REPLY_REFUSED_BY,
  REPLY_ERROR_STATUS,
};

/* Constant constructors of Squeeze.error_kind, then the tag of Unknown_status. */
enum {
  ERROR_KIND_INVALID_ARGUMENT,
  ERROR_KIND_INVALID_MEMORY_VALUE,
  ERROR_KIND_UNKNOWN_RESERVATION,
  ERROR_KIND_NO_RESERVATION,
  ERROR_KIND_BACKEND,
  ERROR_KIND_UNSUPPORTED,
  ERROR_KIND_BUFFER_TOO_SMALL,
  ERROR_KIND_INTERNAL,
};
#define ERROR_KIND_UNKNOWN_STATUS_TAG 0

/* One balancing call in progress. */
struct call {
  value *raw;     /* the Squeeze.raw_io: a local root of the stub's frame */
  value *exn;     /* the first exception a closure raised (Val_unit if none): also a root */
  int failed;     /* a callback failed: every later one refuses, so the library stops soon */
  char note[256]; /* why a callback failed on the C side, added to the error message */
};

static void note_failure(struct call *c, const char *fmt, ...) {
  va_list ap;
  c->failed = 1;
  if (c->note[0] != '\0')
    return; /* the first failure is the one worth reporting */
  va_start(ap, fmt);
  vsnprintf(c->note, sizeof c->note, fmt, ap);
  va_end(ap);
}

static void capture(struct call *c, value exn) {
  if (!c->failed)
    *c->exn = exn;
  c->failed = 1;
}

/* --- Trampolines: the part that runs with the runtime lock held --------------------------- */

static int32_t make_host_locked(struct call *c, sqz_host_builder *b) {
  CAMLparam0();
  CAMLlocal3(snapshot, domains, d);
  mlsize_t i, n;
  /* An exception result is not a valid value: test it before it reaches a root. */
  value r = caml_callback_exn(Field(*c->raw, RAW_MAKE_HOST), Val_unit);
  if (Is_exception_result(r)) {
    capture(c, Extract_exception(r));
    CAMLreturnT(int32_t, 1);
  }
  snapshot = r;
  /* A refused builder call is in the library's own error message already. */
  if (sqz_host_builder_set_free_mem(b, Int64_val(Field(snapshot, 0))) != SQZ_OK)
    CAMLreturnT(int32_t, 1);
  domains = Field(snapshot, 1);
  n = Wosize_val(domains);
  for (i = 0; i < n; i++) {
    sqz_domain sd;
    intnat domid;
    d = Field(domains, i);
    domid = Long_val(Field(d, DOMAIN_DOMID));
    if (domid < INT32_MIN || domid > INT32_MAX) {
      note_failure(c, "make_host: domid %ld does not fit in 32 bits", (long)domid);
      CAMLreturnT(int32_t, 1);
    }
    memset(&sd, 0, sizeof sd);
    sd.domid = (int32_t)domid;
    sd.can_balloon = Bool_val(Field(d, DOMAIN_CAN_BALLOON));
    sd.dynamic_min_kib = Int64_val(Field(d, DOMAIN_DYNAMIC_MIN));
    sd.target_kib = Int64_val(Field(d, DOMAIN_TARGET));
    sd.dynamic_max_kib = Int64_val(Field(d, DOMAIN_DYNAMIC_MAX));
    sd.memory_actual_kib = Int64_val(Field(d, DOMAIN_ACTUAL));
    sd.memory_max_kib = Int64_val(Field(d, DOMAIN_MAXMEM));
    sd.inaccuracy_kib = Int64_val(Field(d, DOMAIN_INACCURACY));
    if (sqz_host_builder_add_domain(b, &sd, sizeof sd) != SQZ_OK)
      CAMLreturnT(int32_t, 1);
    /* Weight 1 is the builder's default: set only the others (a bad one is refused there). */
    if (Double_val(Field(d, DOMAIN_WEIGHT)) != 1.0 &&
        sqz_host_builder_set_weight(b, sd.domid, Double_val(Field(d, DOMAIN_WEIGHT))) != SQZ_OK)
      CAMLreturnT(int32_t, 1);
  }
  CAMLreturnT(int32_t, 0);
}

/* Calls an [int -> int64 -> unit] closure of the raw record. */
static int32_t int_int64_locked(struct call *c, int field, int32_t domid, int64_t kib) {
  CAMLparam0();
  CAMLlocal1(v_kib);
  value r;
  v_kib = caml_copy_int64(kib);
  /* Read the closure only now: the allocation above may have moved the record. */
  r = caml_callback2_exn(Field(*c->raw, field), Val_int(domid), v_kib);
  if (Is_exception_result(r)) {
    capture(c, Extract_exception(r));
    CAMLreturnT(int32_t, 1);
  }
  CAMLreturnT(int32_t, 0);
}

static void wait_locked(struct call *c, double seconds) {
  CAMLparam0();
  CAMLlocal1(v_seconds);
  value r;
  v_seconds = caml_copy_double(seconds);
  r = caml_callback_exn(Field(*c->raw, RAW_WAIT), v_seconds);
  if (Is_exception_result(r))
    capture(c, Extract_exception(r));
  CAMLreturn0;
}

static double now_locked(struct call *c) {
  CAMLparam0();
  value r = caml_callback_exn(Field(*c->raw, RAW_NOW), Val_unit);
  if (Is_exception_result(r)) {
    capture(c, Extract_exception(r));
    /* NaN is how a clock reports failure: the library ends the call with a backend error. */
    CAMLreturnT(double, NAN);
  }
  CAMLreturnT(double, Double_val(r));
}

static bool success_locked(struct call *c, int64_t free_kib) {
  CAMLparam0();
  CAMLlocal1(v_free);
  value r;
  v_free = caml_copy_int64(free_kib);
  r = caml_callback_exn(Field(*c->raw, RAW_SUCCESS), v_free);
  if (Is_exception_result(r)) {
    capture(c, Extract_exception(r));
    CAMLreturnT(bool, false);
  }
  CAMLreturnT(bool, Bool_val(r));
}

/* --- Trampolines: the entry points libsqueeze calls, with the runtime lock released -------- */

static int32_t cb_make_host(void *ctx, sqz_host_builder *b) {
  struct call *c = ctx;
  int32_t rc;
  if (c->failed)
    return 1;
  caml_leave_blocking_section();
  rc = make_host_locked(c, b);
  caml_enter_blocking_section_no_pending();
  return rc;
}

static int32_t cb_set_maxmem(void *ctx, int32_t domid, int64_t kib) {
  struct call *c = ctx;
  int32_t rc;
  if (c->failed)
    return 1;
  caml_leave_blocking_section();
  rc = int_int64_locked(c, RAW_SET_MAXMEM, domid, kib);
  caml_enter_blocking_section_no_pending();
  return rc;
}

static int32_t cb_execute_action(void *ctx, int32_t domid, int64_t new_target_kib) {
  struct call *c = ctx;
  int32_t rc;
  if (c->failed)
    return 1;
  caml_leave_blocking_section();
  rc = int_int64_locked(c, RAW_EXECUTE_ACTION, domid, new_target_kib);
  caml_enter_blocking_section_no_pending();
  return rc;
}

static void cb_wait(void *ctx, double seconds) {
  struct call *c = ctx;
  if (c->failed)
    return;
  caml_leave_blocking_section();
  wait_locked(c, seconds);
  caml_enter_blocking_section_no_pending();
}

static double cb_now(void *ctx) {
  struct call *c = ctx;
  double t;
  if (c->failed)
    return NAN;
  caml_leave_blocking_section();
  t = now_locked(c);
  caml_enter_blocking_section_no_pending();
  return t;
}

static bool cb_success(void *ctx, int64_t host_free_mem_kib) {
  struct call *c = ctx;
  bool ok;
  if (c->failed)
    return false;
  caml_leave_blocking_section();
  ok = success_locked(c, host_free_mem_kib);
  caml_enter_blocking_section_no_pending();
  return ok;
}

/* --- Outcomes ------------------------------------------------------------------------------ */

/* The library's last error, copied out of it before any other sqz_ call can replace it. */
struct outcome {
  sqz_status status;
  char *message; /* malloc'ed; NULL when there was no error or no memory */
  int cannot_free_known;
  int64_t required_kib, free_kib;
  int32_t *domids; /* malloc'ed, n_domids entries */
  size_t n_domids;
};

static void outcome_collect(struct outcome *o, sqz_status status, const struct call *c) {
  memset(o, 0, sizeof *o);
  o->status = status;
  if (status == SQZ_OK)
    return;
  {
    const char *msg = sqz_last_error_message();
    size_t len = strlen(msg ? msg : "");
    size_t extra = (c && c->note[0]) ? strlen(c->note) + 3 : 0;
    o->message = malloc(len + extra + 1);
    if (o->message) {
      memcpy(o->message, msg ? msg : "", len);
      if (extra) {
        memcpy(o->message + len, " (", 2);
        memcpy(o->message + len + 2, c->note, extra - 3);
        o->message[len + extra - 1] = ')';
      }
      o->message[len + extra] = '\0';
    }
  }
  if (status == SQZ_ERR_CANNOT_FREE_THIS_MUCH_MEMORY)
    o->cannot_free_known =
        sqz_last_error_cannot_free(&o->required_kib, &o->free_kib) == SQZ_OK;
  if (status == SQZ_ERR_DOMAINS_REFUSED_TO_COOPERATE) {
    int32_t first[16];
    size_t n = sqz_last_error_domids(first, 16);
    if (n > 0) {
      o->domids = malloc(n * sizeof *o->domids);
      if (o->domids == NULL) {
        n = 0;
      } else if (n <= 16) {
        memcpy(o->domids, first, n * sizeof *o->domids);
      } else {
        n = sqz_last_error_domids(o->domids, n);
      }
    }
    o->n_domids = n;
  }
}

static void outcome_free(struct outcome *o) {
  free(o->message);
  free(o->domids);
  o->message = NULL;
  o->domids = NULL;
}

static value error_kind_of_status(sqz_status status) {
  CAMLparam0();
  CAMLlocal1(kind);
  switch (status) {
  case SQZ_ERR_INVALID_ARGUMENT:
    CAMLreturn(Val_int(ERROR_KIND_INVALID_ARGUMENT));
  case SQZ_ERR_INVALID_MEMORY_VALUE:
    CAMLreturn(Val_int(ERROR_KIND_INVALID_MEMORY_VALUE));
  case SQZ_ERR_UNKNOWN_RESERVATION:
    CAMLreturn(Val_int(ERROR_KIND_UNKNOWN_RESERVATION));
  case SQZ_ERR_NO_RESERVATION:
    CAMLreturn(Val_int(ERROR_KIND_NO_RESERVATION));
  case SQZ_ERR_BACKEND:
    CAMLreturn(Val_int(ERROR_KIND_BACKEND));
  case SQZ_ERR_UNSUPPORTED:
    CAMLreturn(Val_int(ERROR_KIND_UNSUPPORTED));
  case SQZ_ERR_BUFFER_TOO_SMALL:
    CAMLreturn(Val_int(ERROR_KIND_BUFFER_TOO_SMALL));
  case SQZ_ERR_INTERNAL:
    CAMLreturn(Val_int(ERROR_KIND_INTERNAL));
  default:
    kind = caml_alloc(1, ERROR_KIND_UNKNOWN_STATUS_TAG);
    Store_field(kind, 0, Val_int(status));
    CAMLreturn(kind);
  }
}

/* Builds [Error_status (kind, message)]. */
static value error_reply(sqz_status status, const char *message) {
  CAMLparam0();
  CAMLlocal3(reply, kind, msg);
  kind = error_kind_of_status(status);
  msg = caml_copy_string(message ? message : "out of memory while reporting an error");
  reply = caml_alloc(2, REPLY_ERROR_STATUS);
  Store_field(reply, 0, kind);
  Store_field(reply, 1, msg);
  CAMLreturn(reply);
}

/* Builds the reply for a failed call. */
static value failure_reply(const struct outcome *o) {
  CAMLparam0();
  CAMLlocal3(reply, a, b);
  size_t i;
  if (o->status == SQZ_ERR_CANNOT_FREE_THIS_MUCH_MEMORY && o->cannot_free_known) {
    a = caml_copy_int64(o->required_kib);
    b = caml_copy_int64(o->free_kib);
    reply = caml_alloc(2, REPLY_NOT_ENOUGH_MEMORY);
    Store_field(reply, 0, a);
    Store_field(reply, 1, b);
    CAMLreturn(reply);
  }
  if (o->status == SQZ_ERR_DOMAINS_REFUSED_TO_COOPERATE) {
    a = caml_alloc(o->n_domids, 0);
    for (i = 0; i < o->n_domids; i++)
      Store_field(a, i, Val_int(o->domids[i]));
    reply = caml_alloc(1, REPLY_REFUSED_BY);
    Store_field(reply, 0, a);
    CAMLreturn(reply);
  }
  CAMLreturn(error_reply(o->status, o->message));
}

/* --- The calls ----------------------------------------------------------------------------- */

enum op { OP_CHANGE_HOST_FREE_MEMORY, OP_FREE_MEMORY_RANGE, OP_BALANCE_MEMORY, OP_IS_UNBALANCED };

/* [sq] is NULL for squeezed's stateless calls (classic), or a squeezer kept across calls. */
static value run(value v_raw, sqz_squeezer *sq, enum op op, int64_t a, int64_t b) {
  CAMLparam1(v_raw);
  CAMLlocal3(exn, payload, reply);
  struct call c;
  struct outcome o;
  sqz_io io;
  sqz_options *opts = NULL;
  sqz_status status = SQZ_OK;
  int64_t reserved_kib = 0;
  bool unbalanced = false;
  uint32_t fistpoints = (uint32_t)Long_val(Field(v_raw, RAW_FISTPOINTS));

  exn = Val_unit;
  memset(&c, 0, sizeof c);
  c.raw = &v_raw;
  c.exn = &exn;

  memset(&io, 0, sizeof io);
  io.struct_size = sizeof io;
  io.ctx = &c;
  io.make_host = cb_make_host;
  io.set_maxmem = cb_set_maxmem;
  io.execute_action = cb_execute_action;
  io.wait = cb_wait;
  io.now = cb_now;
  io.target_host_free_mem_kib = Int64_val(Field(v_raw, RAW_TARGET_HOST_FREE_MEM));
  io.free_memory_tolerance_kib = Int64_val(Field(v_raw, RAW_FREE_MEMORY_TOLERANCE));

  /* Default options are NULL; only fault injection needs an options object. */
  if (fistpoints != 0) {
    status = sqz_options_new(&opts);
    if (status == SQZ_OK)
      status = sqz_options_set_fistpoints(opts, fistpoints);
    if (status != SQZ_OK) {
      outcome_collect(&o, status, NULL);
      sqz_options_free(opts);
      reply = failure_reply(&o);
      outcome_free(&o);
      CAMLreturn(reply);
    }
  }

  /* From here to caml_leave_blocking_section, no OCaml value may be touched except inside
     the trampolines, which take the lock back first. */
  caml_enter_blocking_section_no_pending();
  switch (op) {
  case OP_CHANGE_HOST_FREE_MEMORY:
    status = sq ? sqz_squeezer_change_host_free_memory(sq, &io, a, cb_success, &c)
                : sqz_change_host_free_memory(&io, opts, a, cb_success, &c);
    break;
  case OP_FREE_MEMORY_RANGE:
    status = sq ? sqz_squeezer_free_memory_range(sq, &io, a, b, &reserved_kib)
                : sqz_free_memory_range(&io, opts, a, b, &reserved_kib);
    break;
  case OP_BALANCE_MEMORY:
    status = sq ? sqz_squeezer_balance_memory(sq, &io) : sqz_balance_memory(&io, opts);
    break;
  case OP_IS_UNBALANCED:
    status = sqz_is_host_memory_unbalanced(&io, opts, &unbalanced);
    break;
  }
  caml_leave_blocking_section();

  outcome_collect(&o, status, &c);
  sqz_options_free(opts);

  if (exn != Val_unit) {
    outcome_free(&o);
    caml_raise(exn);
  }

  if (status != SQZ_OK) {
    reply = failure_reply(&o);
    outcome_free(&o);
    CAMLreturn(reply);
  }
  outcome_free(&o);

  switch (op) {
  case OP_FREE_MEMORY_RANGE:
    payload = caml_copy_int64(reserved_kib);
    break;
  case OP_IS_UNBALANCED:
    payload = Val_bool(unbalanced);
    break;
  default:
    payload = Val_unit;
    break;
  }
  reply = caml_alloc(1, REPLY_DONE);
  Store_field(reply, 0, payload);
  CAMLreturn(reply);
}

CAMLprim value sqz_ml_change_host_free_memory(value v_raw, value v_required) {
  CAMLparam2(v_raw, v_required);
  CAMLreturn(run(v_raw, NULL, OP_CHANGE_HOST_FREE_MEMORY, Int64_val(v_required), 0));
}

CAMLprim value sqz_ml_free_memory_range(value v_raw, value v_min, value v_max) {
  CAMLparam3(v_raw, v_min, v_max);
  CAMLreturn(run(v_raw, NULL, OP_FREE_MEMORY_RANGE, Int64_val(v_min), Int64_val(v_max)));
}

CAMLprim value sqz_ml_balance_memory(value v_raw) {
  CAMLparam1(v_raw);
  CAMLreturn(run(v_raw, NULL, OP_BALANCE_MEMORY, 0, 0));
}

CAMLprim value sqz_ml_is_host_memory_unbalanced(value v_raw) {
  CAMLparam1(v_raw);
  CAMLreturn(run(v_raw, NULL, OP_IS_UNBALANCED, 0, 0));
}

/* The SQZ_FIST_* bit of Squeeze.fistpoint number [index] (declaration order), 0 if unknown. */
CAMLprim value sqz_ml_fistpoint_bit(value v_index) {
  switch (Long_val(v_index)) {
  case 0:
    return Val_long(SQZ_FIST_DISABLE_TWO_PHASE_TARGET_SETS);
  case 1:
    return Val_long(SQZ_FIST_DISABLE_INACCURACY_COMPENSATION);
  default:
    return Val_long(0);
  }
}

/* --- Squeezers kept across calls (the adaptive policy learns between them) ----------------- */

#define Squeezer_val(v) SQZ_ML_HANDLE_SLOT(sqz_squeezer, v)

SQZ_ML_HANDLE(squeezer, sqz_squeezer, sqz_squeezer_free, "org.squeeze.squeezer")

/* [Done squeezer] or the library's error. */
CAMLprim value sqz_ml_squeezer_new(value v_adaptive) {
  CAMLparam1(v_adaptive);
  CAMLlocal2(handle, reply);
  sqz_options *opts = NULL;
  sqz_squeezer *sq = NULL;
  struct outcome o;
  sqz_status status = sqz_options_new(&opts);
  if (status == SQZ_OK)
    status = sqz_options_set_policy(opts, Bool_val(v_adaptive) ? SQZ_POLICY_ADAPTIVE
                                                               : SQZ_POLICY_CLASSIC);
  if (status == SQZ_OK)
    status = sqz_squeezer_new(opts, &sq);
  sqz_options_free(opts);
  if (status != SQZ_OK) {
    outcome_collect(&o, status, NULL);
    reply = failure_reply(&o);
    outcome_free(&o);
    CAMLreturn(reply);
  }
  handle = sqz_ml_wrap(&squeezer_ops, sq);
  reply = caml_alloc(1, REPLY_DONE);
  Store_field(reply, 0, handle);
  CAMLreturn(reply);
}

CAMLprim value sqz_ml_squeezer_change_host_free_memory(value v_sq, value v_raw,
                                                       value v_required) {
  CAMLparam3(v_sq, v_raw, v_required);
  CAMLreturn(run(v_raw, Squeezer_val(v_sq), OP_CHANGE_HOST_FREE_MEMORY, Int64_val(v_required), 0));
}

CAMLprim value sqz_ml_squeezer_free_memory_range(value v_sq, value v_raw, value v_min,
                                                 value v_max) {
  CAMLparam4(v_sq, v_raw, v_min, v_max);
  CAMLreturn(
      run(v_raw, Squeezer_val(v_sq), OP_FREE_MEMORY_RANGE, Int64_val(v_min), Int64_val(v_max)));
}

CAMLprim value sqz_ml_squeezer_balance_memory(value v_sq, value v_raw) {
  CAMLparam2(v_sq, v_raw);
  CAMLreturn(run(v_raw, Squeezer_val(v_sq), OP_BALANCE_MEMORY, 0, 0));
}

/* [Done (score, uncooperative, concern)] or the library's error. */
CAMLprim value sqz_ml_squeezer_cooperation(value v_sq, value v_domid) {
  CAMLparam2(v_sq, v_domid);
  CAMLlocal3(score, triple, reply);
  sqz_cooperation c;
  struct outcome o;
  sqz_status status;
  memset(&c, 0, sizeof c);
  status = sqz_squeezer_cooperation(Squeezer_val(v_sq), (int32_t)Long_val(v_domid), &c);
  if (status != SQZ_OK) {
    outcome_collect(&o, status, NULL);
    reply = failure_reply(&o);
    outcome_free(&o);
    CAMLreturn(reply);
  }
  score = caml_copy_double(c.score_s);
  triple = caml_alloc_tuple(3);
  Store_field(triple, 0, score);
  Store_field(triple, 1, Val_bool(c.uncooperative));
  Store_field(triple, 2, Val_int(c.concern));
  reply = caml_alloc(1, REPLY_DONE);
  Store_field(reply, 0, triple);
  CAMLreturn(reply);
}
