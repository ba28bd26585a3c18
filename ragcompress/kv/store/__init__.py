"""The chunk stores: base interface (+ errors), memory, disk, Redis, the tiered store and its
spec (StoreSpec), and the URL factory (open_store)."""
