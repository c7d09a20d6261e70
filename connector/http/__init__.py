"""One HTTP policy toolkit for every client: status tables (`policy`) and retries (`retry`)."""
