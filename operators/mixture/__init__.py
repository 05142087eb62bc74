"""Mixture arithmetic: the bounded simplex, token budgets, solver kernels, TiKMiX-M search, publish decisions."""
