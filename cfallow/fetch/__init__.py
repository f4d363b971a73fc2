"""Where the list comes from, how it is checked, and when it is asked for again."""
