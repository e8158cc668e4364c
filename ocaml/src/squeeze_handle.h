/* squeeze: a library handle in an OCaml custom block, for the stubs.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * SQZ_ML_HANDLE(name, type, free_fn, id) defines name_finalize, which frees the handle when
 * the block is collected (and clears it, so a finalised block never frees twice), and
 * name_ops, the block's operations; sqz_ml_wrap puts a handle in a new block. Blocks are
 * compared and hashed by address and cannot be serialised: a handle is only valid in the
 * process that made it. */
#ifndef SQUEEZE_HANDLE_H
#define SQUEEZE_HANDLE_H

#include <caml/alloc.h>
#include <caml/custom.h>
#include <caml/mlvalues.h>

#define SQZ_ML_HANDLE_SLOT(type, v) (*((type **)Data_custom_val(v)))

#define SQZ_ML_HANDLE(name, type, free_fn, id)                                                 \
  static void name##_finalize(value v) {                                                       \
    free_fn(SQZ_ML_HANDLE_SLOT(type, v));                                                      \
    SQZ_ML_HANDLE_SLOT(type, v) = NULL;                                                        \
  }                                                                                            \
  static struct custom_operations name##_ops = {                                               \
      id,                         name##_finalize,          custom_compare_default,           \
      custom_hash_default,        custom_serialize_default, custom_deserialize_default,       \
      custom_compare_ext_default, custom_fixed_length_default};

static inline value sqz_ml_wrap(struct custom_operations *ops, void *p) {
  value v = caml_alloc_custom(ops, sizeof p, 0, 1);
  *((void **)Data_custom_val(v)) = p;
  return v;
}

#endif
