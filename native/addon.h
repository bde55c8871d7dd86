// What the addon's files share: the session, the call into JavaScript, small N-API helpers.
// native/session.c runs the event loop side and the session's life, native/ops.c libfuse's
// low-level operations, native/replies.c the reply functions JavaScript calls.
#ifndef VIRCPTFS_ADDON_H
#define VIRCPTFS_ADDON_H

#define FUSE_USE_VERSION 35

#include <fuse_lowlevel.h>
#include <node_api.h>
#include <stdint.h>
#include <uv.h>

#include "slots.h"
#include "watchdog.h"
#include "writers.h"

// The operations JavaScript is asked about (the first argument of the dispatch function).
enum op {
  OP_INIT = 0, OP_LOOKUP, OP_FORGET, OP_GETATTR, OP_OPENDIR, OP_READDIR, OP_RELEASEDIR,
  OP_OPEN, OP_READ, OP_RELEASE, OP_STATFS, OP_LSEEK, OP_INTERRUPT,
};

typedef struct session {
  napi_env env;
  struct fuse_session *se;
  struct fuse_conn_info_opts *conn_opts;
  uv_poll_t poll;
  struct fuse_buf buf;
  napi_ref dispatch;   // function (op, slot, ino, a, b, c, name, uid, gid, pid)
  napi_ref on_end;     // function (status)
  napi_ref self;       // keeps the external alive while the poll handle is open
  napi_async_context async;
  struct slots slots;  // requests JavaScript has not answered yet
  struct watchdog watchdog;
  struct writers writers;
  int open_handles;    // libuv handles not yet closed
  int polling;         // the uv_poll handle is initialised and not yet closed
  int ended;           // the session's loop is over (ENODEV, error, or stop())
  int end_status;
  char *mountpoint;
} session_t;

// ---- helpers -------------------------------------------------------------------------------

#define CHECK(env, call)                                                   \
  do {                                                                     \
    if ((call) != napi_ok) {                                               \
      napi_throw_error((env), NULL, "vircptfs addon: N-API call failed: " #call); \
      return NULL;                                                         \
    }                                                                      \
  } while (0)

// The session that is the first argument of a call from JavaScript (s), or a TypeError.
#define SESSION_ARG                                                    \
  size_t argc = 1;                                                     \
  napi_value argv[1];                                                  \
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));    \
  session_t *s = session_of(env, argv[0]);                             \
  if (!s) return NULL;

napi_value make_number(napi_env env, double v);
napi_value undefined(napi_env env);
int get_double(napi_env env, napi_value v, double *out);
int get_u64(napi_env env, napi_value v, uint64_t *out);
session_t *session_of(napi_env env, napi_value v);

// Calls JavaScript's dispatch function with one request (session.c).
void dispatch(session_t *s, enum op op, uint32_t slot, double ino, double a, double b, double c,
              const char *name, const struct fuse_ctx *ctx);

// libfuse's low-level operations (ops.c).
extern const struct fuse_lowlevel_ops vircptfs_ll_ops;

// The reply functions, as module properties (replies.c).
extern const napi_property_descriptor vircptfs_reply_properties[];
extern const size_t vircptfs_reply_property_count;

#endif
