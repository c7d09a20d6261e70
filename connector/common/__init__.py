"""Small helpers every layer uses: JSON encoding, time parsing and formatting, and
keeping keys out of logs and texts."""
