"""Pure, testable stages of the influmix pipeline (no Ray imports)."""
