// The block cache's public face. It never imports src/nbd: exports/ adapts an NBD connection
// to BlockSource.
export { BlockCache } from './block-cache.js';
export { DEFAULT_REORDER_SLACK, Reader } from './reader.js';
export { ZeroMap } from './zero-map.js';
export type { BlockCacheOptions, BlockSource, CacheStats, Extent, ReadaheadOptions } from './types.js';
