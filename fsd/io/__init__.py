"""Moving bytes between the caller, the SSD and the disks: appending records to open shards
and sealing them (`writer`, `put`, `planner`), finishing what a crash left open
(`recovery`), copying shards and bringing them to their number of copies (`replica`,
`replicate`), and reading them back to check them (`scrub`). Each part is handed a store
(`fsd.store` names its class under TYPE_CHECKING only) and imports only `fsd.core` and
`fsd.base`."""
