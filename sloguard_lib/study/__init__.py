"""A study: the search space, the ask/tell loop over trials, its fsync'd log and what it recommends."""
