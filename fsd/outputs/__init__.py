"""What the store serves and takes in beside objects: the SSD's quota'd zones (`zones`),
sealing a job's output there (`seal`), stage/export trees made from objects
(`materialize`), named views and batches of the store (`views`, `manifest`: the 3B package
format), named puts (`puts`) and thumbnails (`thumbs`). Built on the store facade, below
the maintenance that reads them."""
