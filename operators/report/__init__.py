"""Human-readable renderings of a finished refresh (the HTML report)."""
