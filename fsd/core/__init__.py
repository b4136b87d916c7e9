"""The store's facts and their formats (`formats`: every on-disk format, its version, the
index's migrations): what a shard is (`shardfmt`, `records`), the disks
that hold shards (`disks` and `diskid`: a local disk, a disk's identity and record; `backend`:
the contract every caller of a disk uses; `s3`: a bucket on an S3-compatible engine), what a
disk keeps beside its shards (`beside`: files on a local disk; `s3files`: objects in a
bucket), where things live on them (`layout`), what each disk's marks log and pointer files say and the
index's tables that mirror them (`marks`, `pointers`), the LMDB index of every object
(`index`, with its entries' encoding in `entries` and its events and repairs in `events`),
where a new shard goes (`placement`), the store's lock (`storelock`) and what each disk's
drive says of itself (`smart`). Imports only `hoardfs.base`."""
