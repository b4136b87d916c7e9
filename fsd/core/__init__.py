"""The store's facts and their formats: what a shard is (`shardfmt`, `records`), the disks
that hold shards (`disks`, `backend`: the contract a place that holds shards meets), where
things live on them (`layout`), what each disk's marks log and pointer files say (`marks`,
`pointers`), the LMDB index of every object (`index`), where a new shard goes
(`placement`) and the store's lock (`storelock`). Imports only `fsd.base`."""
