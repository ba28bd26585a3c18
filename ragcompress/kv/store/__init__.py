"""The chunk stores: base interface, memory, disk, Redis, tiers, and the URL factory."""
