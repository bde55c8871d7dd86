// libfuse's low-level operations: each request JavaScript must answer goes into a slot and to
// the dispatch function; what needs no JavaScript (forget's reply, EROFS for every write-like
// call, an open for writing) is answered here.
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>

#include "addon.h"

static session_t *session_of_req(fuse_req_t req) {
  return fuse_req_userdata(req);
}

// Registers a request and hands it to JavaScript; EIO when no slot can be had.
static void forward(fuse_req_t req, enum op op, double ino, double a, double b, double c,
                    const char *name) {
  session_t *s = session_of_req(req);
  uint32_t slot = slots_put(&s->slots, req);
  if (slot == 0) {
    fuse_reply_err(req, EIO);
    return;
  }
  dispatch(s, op, slot, ino, a, b, c, name, fuse_req_ctx(req));
}


static void ll_init(void *userdata, struct fuse_conn_info *conn) {
  session_t *s = userdata;
  // Splice is off by default; libfuse 3 turns on async reads, parallel dirops and the largest
  // requests the kernel offers (max_pages) by itself. The mount's -o connection options win.
  if (s->conn_opts) fuse_apply_conn_info_opts(s->conn_opts, conn);
  dispatch(s, OP_INIT, 0, 0, conn->max_readahead, conn->max_write, conn->max_background, NULL, NULL);
}

static void ll_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
  forward(req, OP_LOOKUP, parent, 0, 0, 0, name);
}

static void ll_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  session_t *s = session_of_req(req);
  fuse_reply_none(req);
  dispatch(s, OP_FORGET, 0, ino, (double)nlookup, 0, 0, NULL, NULL);
}

static void ll_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets) {
  session_t *s = session_of_req(req);
  for (size_t i = 0; i < count; i++) {
    dispatch(s, OP_FORGET, 0, forgets[i].ino, (double)forgets[i].nlookup, 0, 0, NULL, NULL);
  }
  fuse_reply_none(req);
}

static void ll_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  (void)fi;
  forward(req, OP_GETATTR, ino, 0, 0, 0, NULL);
}

static void ll_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  (void)fi;
  forward(req, OP_OPENDIR, ino, 0, 0, 0, NULL);
}

static void ll_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  forward(req, OP_READDIR, ino, (double)fi->fh, (double)off, (double)size, NULL);
}

static void ll_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  forward(req, OP_RELEASEDIR, ino, (double)fi->fh, 0, 0, NULL);
}

static void ll_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  // Opening for writing is refused here, whatever JavaScript would say.
  if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
    fuse_reply_err(req, EROFS);
    return;
  }
  forward(req, OP_OPEN, ino, fi->flags, 0, 0, NULL);
}

static void on_interrupt(fuse_req_t req, void *data) {
  session_t *s = session_of_req(req);
  uint32_t slot = (uint32_t)(uintptr_t)data;
  // Only while JavaScript still holds the request: after its reply the slot may be reused.
  if (slots_peek(&s->slots, slot) == req) dispatch(s, OP_INTERRUPT, slot, 0, 0, 0, 0, NULL, NULL);
}

static void ll_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  session_t *s = session_of_req(req);
  uint32_t slot = slots_put(&s->slots, req);
  if (slot == 0) {
    fuse_reply_err(req, EIO);
    return;
  }
  dispatch(s, OP_READ, slot, ino, (double)fi->fh, (double)off, (double)size, NULL, fuse_req_ctx(req));
  // After dispatch: an interrupt that already arrived calls on_interrupt at once, and then
  // JavaScript knows the slot. Not when JavaScript answered synchronously (slot free again).
  if (slots_peek(&s->slots, slot) == req) fuse_req_interrupt_func(req, on_interrupt, (void *)(uintptr_t)slot);
}

static void ll_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  forward(req, OP_RELEASE, ino, (double)fi->fh, 0, 0, NULL);
}

static void ll_statfs(fuse_req_t req, fuse_ino_t ino) {
  forward(req, OP_STATFS, ino, 0, 0, 0, NULL);
}

static void ll_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence, struct fuse_file_info *fi) {
  forward(req, OP_LSEEK, ino, (double)fi->fh, (double)off, whence, NULL);
}

// Everything that would change the filesystem: read-only, whoever asks.
static void rofs(fuse_req_t req) { fuse_reply_err(req, EROFS); }
static void ll_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi) {
  (void)ino; (void)attr; (void)to_set; (void)fi; rofs(req);
}
static void ll_mknod(fuse_req_t req, fuse_ino_t p, const char *n, mode_t m, dev_t d) {
  (void)p; (void)n; (void)m; (void)d; rofs(req);
}
static void ll_mkdir(fuse_req_t req, fuse_ino_t p, const char *n, mode_t m) { (void)p; (void)n; (void)m; rofs(req); }
static void ll_unlink(fuse_req_t req, fuse_ino_t p, const char *n) { (void)p; (void)n; rofs(req); }
static void ll_symlink(fuse_req_t req, const char *l, fuse_ino_t p, const char *n) { (void)l; (void)p; (void)n; rofs(req); }
static void ll_rename(fuse_req_t req, fuse_ino_t p, const char *n, fuse_ino_t np, const char *nn, unsigned int f) {
  (void)p; (void)n; (void)np; (void)nn; (void)f; rofs(req);
}
static void ll_link(fuse_req_t req, fuse_ino_t i, fuse_ino_t np, const char *nn) { (void)i; (void)np; (void)nn; rofs(req); }
static void ll_write(fuse_req_t req, fuse_ino_t i, const char *b, size_t sz, off_t o, struct fuse_file_info *fi) {
  (void)i; (void)b; (void)sz; (void)o; (void)fi; rofs(req);
}
static void ll_setxattr(fuse_req_t req, fuse_ino_t i, const char *n, const char *v, size_t sz, int f) {
  (void)i; (void)n; (void)v; (void)sz; (void)f; rofs(req);
}
static void ll_removexattr(fuse_req_t req, fuse_ino_t i, const char *n) { (void)i; (void)n; rofs(req); }
static void ll_create(fuse_req_t req, fuse_ino_t p, const char *n, mode_t m, struct fuse_file_info *fi) {
  (void)p; (void)n; (void)m; (void)fi; rofs(req);
}
static void ll_fallocate(fuse_req_t req, fuse_ino_t i, int m, off_t o, off_t l, struct fuse_file_info *fi) {
  (void)i; (void)m; (void)o; (void)l; (void)fi; rofs(req);
}
static void ll_copy_file_range(fuse_req_t req, fuse_ino_t i, off_t o, struct fuse_file_info *fi, fuse_ino_t oi,
                               off_t oo, struct fuse_file_info *ofi, size_t l, int f) {
  (void)i; (void)o; (void)fi; (void)oi; (void)oo; (void)ofi; (void)l; (void)f; rofs(req);
}

const struct fuse_lowlevel_ops vircptfs_ll_ops = {
  .init = ll_init,
  .lookup = ll_lookup,
  .forget = ll_forget,
  .forget_multi = ll_forget_multi,
  .getattr = ll_getattr,
  .opendir = ll_opendir,
  .readdir = ll_readdir,
  .releasedir = ll_releasedir,
  .open = ll_open,
  .read = ll_read,
  .release = ll_release,
  .statfs = ll_statfs,
  .lseek = ll_lseek,
  .setattr = ll_setattr,
  .mknod = ll_mknod,
  .mkdir = ll_mkdir,
  .unlink = ll_unlink,
  .rmdir = ll_unlink,
  .symlink = ll_symlink,
  .rename = ll_rename,
  .link = ll_link,
  .write = ll_write,
  .setxattr = ll_setxattr,
  .removexattr = ll_removexattr,
  .create = ll_create,
  .fallocate = ll_fallocate,
  .copy_file_range = ll_copy_file_range,
};

