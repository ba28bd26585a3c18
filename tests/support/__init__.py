"""Helpers the tests share: tiny seeded models, store fault scenarios, a throwaway Redis."""
