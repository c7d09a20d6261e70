"""Run reports, one concern: the typed model and its builder (`model`), storage in the
state database (`store`), renderings as text, JSON, HTML and diffs (`render`, with the
alert and schema sections in `sections`), and the `report` commands (`cli`)."""
