// The block cache's public face. It never imports src/nbd: exports/ adapts an NBD connection
// to BlockSource.
export { BlockCache, DEFAULT_BLOCK_SIZE, DEFAULT_MAX_BYTES, DEFAULT_MAX_POOL } from './block-cache.js';
export { DEFAULT_READAHEAD_MAX, DEFAULT_READAHEAD_MIN, DEFAULT_REORDER_SLACK, Reader } from './reader.js';
export { ZeroMap } from './zero-map.js';
export type { BlockCacheOptions, BlockSource, CacheStats, Extent, ReadaheadOptions } from './types.js';
