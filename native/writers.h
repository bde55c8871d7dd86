// Threads that only move bytes: a read's reply (up to 1 MiB, copied by the kernel into the
// reader's page cache or buffer) is written to /dev/fuse by one of WRITER_THREADS threads, so
// that copy runs beside the JavaScript thread instead of on it. JavaScript keeps the reply's
// buffer alive and unused until it asks (written(), when it needs a buffer) and hears that the
// write is done: no wakeup of the event loop per reply.
// Everything else (lookups, attributes, small replies) is answered on the loop thread.
#ifndef VIRCPTFS_WRITERS_H
#define VIRCPTFS_WRITERS_H

#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <uv.h>

#define WRITER_THREADS 2

struct write_job {
  fuse_req_t req;
  const void *data;
  size_t len;
  double token;
  struct write_job *next;
};

struct writers {
  pthread_t threads[WRITER_THREADS];
  int started;
  pthread_mutex_t lock;
  pthread_cond_t wake;
  struct write_job *head, *tail;  // to write
  struct write_job *done;         // written, not yet reported to JavaScript
  int stop;
};

static inline void *writer_run(void *arg) {
  struct writers *w = arg;
  pthread_mutex_lock(&w->lock);
  for (;;) {
    while (!w->head && !w->stop) pthread_cond_wait(&w->wake, &w->lock);
    struct write_job *job = w->head;
    if (!job) break;  // stopping, and nothing left to write
    w->head = job->next;
    if (!w->head) w->tail = NULL;
    pthread_mutex_unlock(&w->lock);
    fuse_reply_buf(job->req, job->data, job->len);
    pthread_mutex_lock(&w->lock);
    job->next = w->done;
    w->done = job;
  }
  pthread_mutex_unlock(&w->lock);
  return NULL;
}

static inline int writers_start(struct writers *w) {
  w->head = w->tail = w->done = NULL;
  w->stop = 0;
  w->started = 0;
  pthread_mutex_init(&w->lock, NULL);
  pthread_cond_init(&w->wake, NULL);
  for (int i = 0; i < WRITER_THREADS; i++) {
    if (pthread_create(&w->threads[i], NULL, writer_run, w) != 0) break;
    w->started++;
  }
  return w->started > 0 ? 0 : -1;
}

static inline int writers_push(struct writers *w, fuse_req_t req, const void *data, size_t len, double token) {
  struct write_job *job = malloc(sizeof *job);
  if (!job) return -1;
  *job = (struct write_job){.req = req, .data = data, .len = len, .token = token};
  pthread_mutex_lock(&w->lock);
  if (w->tail) w->tail->next = job;
  else w->head = job;
  w->tail = job;
  pthread_cond_signal(&w->wake);
  pthread_mutex_unlock(&w->lock);
  return 0;
}

// The jobs written so far, in a list the caller frees (loop thread).
static inline struct write_job *writers_take_done(struct writers *w) {
  pthread_mutex_lock(&w->lock);
  struct write_job *done = w->done;
  w->done = NULL;
  pthread_mutex_unlock(&w->lock);
  return done;
}

// Puts jobs taken by writers_take_done back on the done list.
static inline void writers_give_back(struct writers *w, struct write_job *jobs) {
  pthread_mutex_lock(&w->lock);
  while (jobs) {
    struct write_job *next = jobs->next;
    jobs->next = w->done;
    w->done = jobs;
    jobs = next;
  }
  pthread_mutex_unlock(&w->lock);
}

// Writes what is queued, then ends the threads (the session is ending).
static inline void writers_stop(struct writers *w) {
  pthread_mutex_lock(&w->lock);
  w->stop = 1;
  pthread_cond_broadcast(&w->wake);
  pthread_mutex_unlock(&w->lock);
  for (int i = 0; i < w->started; i++) pthread_join(w->threads[i], NULL);
  w->started = 0;
}

static inline void writers_free(struct writers *w) {
  struct write_job *job = writers_take_done(w);
  while (job) {
    struct write_job *next = job->next;
    free(job);
    job = next;
  }
  pthread_mutex_destroy(&w->lock);
  pthread_cond_destroy(&w->wake);
}

#endif
