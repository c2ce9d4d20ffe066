"""Optional fast paths; each has a plain-torch reference it is tested against."""
