"""Moving bytes between the caller, the SSD and the disks, under the `hoardfs.fsd.store` facade:
attaching the configured disks (`attach`), keeping every disk's marks log and pointers in
step with the index (`copies`), appending records to open shards and sealing them
(`writer`, `put`), reading batches (`planner`), finishing what a crash left open
(`recovery`), copying shards and bringing them to their number of copies (`replica`,
`replicate`), reading them back to check them (`scrub`), and the one judgement of the marks
logs and pointers that check, verify and health share (`integrity`), and what its last
reading of each marks log found (`judged`). The facade and its
parts are one layer: the facade imports the parts and delegates; a part is handed a store
and names its class under TYPE_CHECKING only. They import only `hoardfs.fsd.core` and `hoardfs.base`.
"""
