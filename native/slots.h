// Requests handed to JavaScript and not yet answered, named by a 32-bit slot id: the low 20
// bits index a table, the high 12 bits count the index's reuses, so a late or repeated reply
// names a slot that no longer matches and is ignored instead of answering another request.
#ifndef VIRCPTFS_SLOTS_H
#define VIRCPTFS_SLOTS_H

#include <fuse_lowlevel.h>
#include <stdint.h>
#include <stdlib.h>

#define SLOT_INDEX_BITS 20
#define SLOT_INDEX_MASK ((1u << SLOT_INDEX_BITS) - 1)

struct slot {
  fuse_req_t req;
  uint32_t gen;
  uint32_t next_free;  // index + 1 of the next free slot, 0 at the end
};

struct slots {
  struct slot *table;
  uint32_t size;       // entries in table (index 0 is never used: id 0 means "none")
  uint32_t free_head;  // index + 1 of the first free entry, 0 when none
  uint32_t used;
};

static inline void slots_init(struct slots *s) {
  s->table = NULL;
  s->size = 0;
  s->free_head = 0;
  s->used = 0;
}

static inline void slots_free(struct slots *s) {
  free(s->table);
  slots_init(s);
}

// The id of a new slot holding req, or 0 when the table cannot grow.
static inline uint32_t slots_put(struct slots *s, fuse_req_t req) {
  if (s->free_head == 0) {
    uint32_t grown = s->size ? s->size * 2 : 64;
    if (grown > SLOT_INDEX_MASK + 1) return 0;
    struct slot *t = realloc(s->table, grown * sizeof *t);
    if (!t) return 0;
    for (uint32_t i = s->size ? s->size : 1; i < grown; i++) {
      t[i].req = NULL;
      t[i].gen = 0;
      t[i].next_free = i + 1 < grown ? i + 2 : s->free_head;
    }
    s->free_head = s->size ? s->size + 1 : 2;
    s->table = t;
    s->size = grown;
  }
  uint32_t index = s->free_head - 1;
  struct slot *e = &s->table[index];
  s->free_head = e->next_free;
  e->req = req;
  e->gen = (e->gen + 1) & 0xfff;
  s->used++;
  return index | (e->gen << SLOT_INDEX_BITS);
}

static inline struct slot *slots_find(struct slots *s, uint32_t id) {
  uint32_t index = id & SLOT_INDEX_MASK;
  if (index == 0 || index >= s->size) return NULL;
  struct slot *e = &s->table[index];
  if (e->req == NULL || e->gen != id >> SLOT_INDEX_BITS) return NULL;
  return e;
}

static inline fuse_req_t slots_peek(struct slots *s, uint32_t id) {
  struct slot *e = slots_find(s, id);
  return e ? e->req : NULL;
}

// Removes and returns the request of slot id; NULL when the id is stale or unknown.
static inline fuse_req_t slots_take(struct slots *s, uint32_t id) {
  struct slot *e = slots_find(s, id);
  if (!e) return NULL;
  fuse_req_t req = e->req;
  e->req = NULL;
  e->next_free = s->free_head;
  s->free_head = (id & SLOT_INDEX_MASK) + 1;
  s->used--;
  return req;
}

// Any request still held (to answer them all at the end), or NULL.
static inline fuse_req_t slots_take_any(struct slots *s) {
  for (uint32_t i = 1; s->used > 0 && i < s->size; i++) {
    if (s->table[i].req) return slots_take(s, i | (s->table[i].gen << SLOT_INDEX_BITS));
  }
  return NULL;
}

#endif
