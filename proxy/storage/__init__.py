"""Where bytes and facts are kept: blobs on disk, metadata in diskcache, shared facts in aiocache."""
