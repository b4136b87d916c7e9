"""Keeping the store whole over time: freeing deleted bytes (`gc`, `deletion`), bringing a
lost disk's shards back (`rebuild`, `lifecycle`: a disk's life from added to retired),
rebuilding or copying the index (`reindex`), finding what is wrong and saying what to do
(`check`, `orphans`, `health`). Handed a store or opening one; the top of `fsd` under the
mount and the command line."""
