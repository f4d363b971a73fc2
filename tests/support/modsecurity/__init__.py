"""Private Apache (mod_security2) and nginx (libmodsecurity 3) with the Core Rule Set."""
